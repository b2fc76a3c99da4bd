//! Layer 4, training loops and their parts: the AdamW optimiser with saveable state ([`optim`]), the
//! learning-rate schedule ([`schedule`]), the config sections every trainer shares ([`config`]), the run
//! directory every trainer writes through — resume, checkpoints, metrics, manifest, progress, report
//! ([`run`], [`report`]) — and the trainers: supervised fine-tuning ([`sft`]), the reward model ([`rm`])
//! and the DPO family ([`dpo`]).

pub mod batch;
pub mod config;
pub mod dpo;
pub mod eval;
pub mod lm;
pub mod optim;
pub mod report;
pub mod rm;
pub mod run;
pub mod schedule;
pub mod sft;
