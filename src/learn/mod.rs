//! What the model trainer's side learns with, shared by the trainer stages: classifiers on
//! frozen embeddings ([`linear`]: 1-NN, the linear probe, identity ranks), face crops as a
//! training set ([`crops`]), end-to-end fine-tuning of a zoo model with checkpoints that a
//! resumed run continues from ([`finetune`], with its optimiser in [`optim`]), and clustering
//! with its scores ([`cluster`]), and ROC figures ([`roc`]).

pub mod cluster;
pub mod crops;
pub mod finetune;
pub mod linear;
pub mod optim;
pub mod roc;
