//! Training loops and their parts: the AdamW optimiser with saveable state ([`optim`]), the learning-rate
//! schedule ([`schedule`]), and supervised fine-tuning / language-model training of the GPT ([`sft`]).

pub mod optim;
pub mod schedule;
pub mod sft;
