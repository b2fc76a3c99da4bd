//! Layer 4, training loops and their parts: the AdamW optimiser with saveable state ([`optim`]), the
//! learning-rate schedule ([`schedule`]), the config sections every trainer shares ([`config`]), the run
//! directory every trainer writes through — resume, checkpoints, metrics, manifest, progress, report
//! ([`run`], [`report`]) — the trainers: supervised fine-tuning ([`sft`]), the reward model ([`rm`]), the
//! DPO family ([`dpo`]) and PPO ([`ppo`]) — the evaluator ([`eval`]), Best-of-N reranking
//! ([`best_of_n`]) and the Hugging Face export of a trained GPT ([`export`]).

pub mod batch;
pub mod best_of_n;
pub mod config;
pub mod dpo;
pub mod eval;
pub mod export;
pub mod lm;
pub mod optim;
pub mod ppo;
pub mod prompts;
pub mod report;
pub mod rm;
pub mod run;
pub mod schedule;
pub mod sft;
