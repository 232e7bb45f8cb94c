//! Faces: finding them (MTCNN) and cropping them the way each model expects ([`align`]).

pub mod align;
