pub mod align;
pub mod mtcnn;
