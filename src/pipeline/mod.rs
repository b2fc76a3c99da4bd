//! Layer 5, pipelines: multi-stage experiments built from the trainers, each stage cached by its
//! configuration ([`stages`]) so a killed sweep resumes where it stopped.
//!
//! * [`dpo_sentiment`]: the DPO paper's controlled-sentiment experiment (Rafailov et al. 2023 §6.1,
//!   Figure 2) end to end — SFT, ground truth, preference pairs, reward models, DPO family, PPO, PPO-GT,
//!   Best-of-N, and the reward–KL [`frontier`].
//! * [`perf`]: the performance suite (`rlhf-lab bench`), every workload beside its PyTorch anchor;
//!   [`perf_workloads`] sets up and times each case, [`perf_report`] writes `reports/perf.md`.

pub mod dpo_sentiment;
pub mod frontier;
pub mod perf;
pub mod perf_report;
pub mod perf_workloads;
pub mod stages;
