//! Faces: finding them ([`mtcnn`]) and cropping them the way each model expects ([`align`]).

pub mod align;
pub mod mtcnn;
