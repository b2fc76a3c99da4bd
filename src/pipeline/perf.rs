//! The performance suite behind `rlhf-lab bench` (`make bench`): every workload of the library timed
//! on this machine, beside its PyTorch equivalent (`benches/anchors/perf_anchors.py`, same shapes, same
//! run), next to the machine's own ceilings, written to `reports/perf.md` with figures.
//!
//! This file holds the cases, the plan, the timer and the suite (child processes, the anchor processes);
//! [`crate::pipeline::perf_workloads`] sets up and times each workload.
//!
//! Workloads (sizes of the full suite; `--quick` shrinks every one so CI only checks that it runs):
//!
//! | workload | what is timed | anchor (PyTorch eager, same shapes) |
//! |---|---|---|
//! | `matmul` | `A @ B`, `n × n` f32: the compute ceiling | `torch.mm` |
//! | `copy` | `dst.copy_(src)`, 64 Mi f32: the memory-bandwidth ceiling (read + write) | `Tensor.copy_` |
//! | `read` | `src.sum()`, 64 Mi f32: the read-bandwidth ceiling (what batch-1 decoding streams) | `Tensor.sum` |
//! | `gae-zero`, `gae-skip` | `core::advantages::gae` on `(B, T)` f32 with ragged padding | TRL's / verl's loop |
//! | `sft-step` | one step of `train::sft`: forward, NLL, backward, clip, AdamW | HF `GPT2LMHeadModel` + `cross_entropy` |
//! | `dpo-step` | one step of `train::dpo`: policy pair log-probs, DPO loss (cached reference), update | HF GPT-2 + TRL's sigmoid loss |
//! | `rm-step` | one step of `train::rm`: pair scores, Bradley–Terry loss, update | HF `GPT2ForSequenceClassification` + TRL's loss |
//! | `sample` | `model::generate` with the KV cache, plain sampling | HF `generate(do_sample=True)` |
//! | `decode-smollm2` | greedy batch-1 decoding of SmolLM2-135M (f32) | HF `LlamaForCausalLM.generate`, same config |
//! | `ppo-iteration` | one iteration of `train::ppo` (rollout, scores, experience, epochs of updates) | the same loop in PyTorch with HF models and TRL's formulas |
//!
//! Each case is warmed up once, then repeated until it has run `min_reps` times and `min_secs`
//! seconds; the report gives the median and the interquartile range. Cases that need a fresh process
//! (a competing CPU-bound process, libgomp's passive wait policy, which libgomp reads only at start-up)
//! run in a child `rlhf-lab bench --case <json>`.
//!
//! FLOP counts: a training step costs `6·N + 12·L·C·T` FLOPs per token (Kaplan et al. 2020 Table 1, the
//! attention term as in Chowdhery et al. 2022 App. B), with `N` the matmul parameters
//! (`12·L·C²` for the blocks + `V·C` for the tied LM head); a forward-only token costs a third of that.
//! These are the nominal model FLOPs of the workload (what the anchor computes): where rlhf-lab skips
//! work (the DPO step's LM head at prompt positions), it shows as a higher achieved rate.

use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A median time and its spread over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub median_ms: f64,
    pub q1_ms: f64,
    pub q3_ms: f64,
    pub reps: usize,
}

/// The anchor's measurement of a case (filled in by `benches/anchors/perf_anchors.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    /// What ran, e.g. `"HF GPT2LMHeadModel + torch.optim.AdamW"`.
    pub name: String,
    #[serde(flatten)]
    pub timing: Timing,
}

/// One workload at one size, thread count and machine condition, with its measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// The workload (see the module table).
    pub workload: String,
    /// Its sizes, e.g. `{"B": 16, "T": 128}` (names as in the shape comments of the code).
    pub params: BTreeMap<String, i64>,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Competing CPU-bound processes (`sh` busy loops, one core each) that ran during the measurement.
    #[serde(default)]
    pub competitors: usize,
    /// libgomp's wait policy: `default` (spin, then sleep) or `passive` (`OMP_WAIT_POLICY=PASSIVE`).
    #[serde(default = "default_policy")]
    pub wait_policy: String,
    /// Run with glibc's default allocator parameters (`RLHF_LAB_MALLOC=system`) instead of
    /// [`crate::alloc::keep_freed_memory`].
    #[serde(default)]
    pub system_malloc: bool,
    /// The figure family this case belongs to (scaling curves), if any.
    #[serde(default)]
    pub family: Option<String>,
    /// Floating-point operations of one repetition (model FLOP count, see the module docs).
    pub flops: Option<f64>,
    /// Bytes one repetition must move at least (inputs read + outputs written).
    pub bytes: Option<f64>,
    /// Tokens one repetition processes (trained on or generated).
    pub tokens: Option<f64>,
    /// rlhf-lab's time.
    pub rust: Option<Timing>,
    /// The PyTorch equivalent's time.
    pub anchor: Option<Anchor>,
    /// The PyTorch equivalent's time with rlhf-lab's allocator policy (`crate::alloc`) set through
    /// glibc's environment variables (training steps only).
    #[serde(default)]
    pub anchor_same_malloc: Option<Anchor>,
    /// Why a measurement is missing, if it is.
    #[serde(default)]
    pub note: Option<String>,
}

fn default_policy() -> String {
    "default".into()
}

impl Case {
    fn new(workload: &str, params: &[(&str, i64)], threads: i32) -> Self {
        Case {
            workload: workload.into(),
            params: params.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            threads,
            competitors: 0,
            wait_policy: default_policy(),
            system_malloc: false,
            family: None,
            flops: None,
            bytes: None,
            tokens: None,
            rust: None,
            anchor: None,
            anchor_same_malloc: None,
            note: None,
        }
    }

    fn family(mut self, f: &str) -> Self {
        self.family = Some(f.into());
        self
    }

    /// `workload k=v … threads=n [busy×c] [passive] [system-malloc]`: unique within a suite.
    pub fn key(&self) -> String {
        let mut k = self.workload.clone();
        for (n, v) in &self.params {
            k.push_str(&format!(" {n}={v}"));
        }
        k.push_str(&format!(" threads={}", self.threads));
        if self.competitors > 0 {
            k.push_str(&format!(" busy×{}", self.competitors));
        }
        if self.wait_policy != "default" {
            k.push_str(&format!(" {}", self.wait_policy));
        }
        if self.system_malloc {
            k.push_str(" system-malloc");
        }
        k
    }

    /// The size `name` of the case (an error naming the case if it has none).
    pub(crate) fn p(&self, name: &str) -> Result<i64> {
        self.params
            .get(name)
            .copied()
            .ok_or_else(|| RlhfError::invalid("case", format!("{} has no {name}", self.key())))
    }

    /// Whether it must run in a fresh child process.
    fn needs_child(&self) -> bool {
        self.competitors > 0 || self.wait_policy != "default" || self.system_malloc
    }
}

/// How long each case runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub warmup: usize,
    pub min_reps: usize,
    pub min_secs: f64,
    pub max_reps: usize,
}

impl Budget {
    /// [`Budget::quick`] or [`Budget::full`].
    pub fn of(quick: bool) -> Self {
        if quick {
            Self::quick()
        } else {
            Self::full()
        }
    }
    pub fn full() -> Self {
        Budget {
            warmup: 1,
            min_reps: 5,
            min_secs: 1.0,
            max_reps: 50,
        }
    }
    pub fn quick() -> Self {
        Budget {
            warmup: 0,
            min_reps: 2,
            min_secs: 0.0,
            max_reps: 2,
        }
    }
}

/// Runs `f` `warmup` times, then until both `min_reps` and `min_secs` are reached (at most `max_reps`,
/// and at least 3 repetitions once 30 s have passed).
pub fn time_it(budget: Budget, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..budget.warmup {
        f()?;
    }
    let start = Instant::now();
    let mut ms = Vec::new();
    loop {
        let t0 = Instant::now();
        f()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        let spent = start.elapsed().as_secs_f64();
        let enough = ms.len() >= budget.min_reps && spent >= budget.min_secs;
        if enough || ms.len() >= budget.max_reps || (spent > 30.0 && ms.len() >= 3) {
            break;
        }
    }
    Ok(timing_of(&mut ms))
}

/// Median and quartiles (linear interpolation) of `ms`.
pub fn timing_of(ms: &mut [f64]) -> Timing {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let x = p * (ms.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        ms[lo] + (ms[hi] - ms[lo]) * (x - lo as f64)
    };
    Timing {
        median_ms: q(0.5),
        q1_ms: q(0.25),
        q3_ms: q(0.75),
        reps: ms.len(),
    }
}

// ---------------------------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------------------------

/// Every case of the suite, in run order. `threads`: the thread count of the main rows (the thread
/// policy rows use 1 and 2 regardless).
pub fn plan(quick: bool, threads: i32) -> Vec<Case> {
    let th = threads;
    let mut c = Vec::new();
    if quick {
        for t in [1, 2] {
            c.push(Case::new("matmul", &[("n", 128)], t));
            c.push(Case::new("copy", &[("n", 1 << 20)], t));
            c.push(Case::new("read", &[("n", 1 << 20)], t));
        }
        c.push(Case::new("gae-zero", &[("B", 8), ("T", 64)], th));
        c.push(Case::new("gae-skip", &[("B", 8), ("T", 64)], th));
        let tiny = [("V", 512), ("C", 32), ("L", 1), ("H", 2)];
        let with = |extra: &[(&'static str, i64)]| -> Vec<(&'static str, i64)> {
            tiny.iter().chain(extra).copied().collect()
        };
        c.push(Case::new("sft-step", &with(&[("B", 2), ("T", 16)]), th));
        c.push(Case::new("dpo-step", &with(&[("P", 2), ("S", 12)]), th));
        c.push(Case::new("rm-step", &with(&[("P", 2), ("S", 12)]), th));
        c.push(Case::new("sample", &with(&[("B", 2), ("N", 4)]), th));
        c.push(Case::new("decode-smollm2", &[("B", 1), ("N", 2)], 1));
        c.push(Case::new(
            "ppo-iteration",
            &with(&[("B", 4), ("N", 4), ("E", 1), ("M", 2)]),
            th,
        ));
        let mut busy = Case::new("gae-zero", &[("B", 8), ("T", 64)], 2).family("threads");
        busy.competitors = 1;
        busy.wait_policy = "passive".into();
        c.push(busy);
        let mut system = Case::new("sft-step", &with(&[("B", 2), ("T", 16)]), th).family("malloc");
        system.system_malloc = true;
        c.push(system);
    } else {
        // Ceilings at every thread count used below.
        for t in [1, 2] {
            c.push(Case::new("matmul", &[("n", 1024)], t));
            c.push(Case::new("copy", &[("n", 64 << 20)], t));
            c.push(Case::new("read", &[("n", 64 << 20)], t));
        }
        // GAE: the shape in both masked-step modes, then cost vs T and vs B.
        c.push(Case::new("gae-zero", &[("B", 256), ("T", 1024)], th));
        c.push(Case::new("gae-skip", &[("B", 256), ("T", 1024)], th));
        for t in [64, 256, 4096, 8192] {
            c.push(Case::new("gae-zero", &[("B", 256), ("T", t)], th).family("gae-T"));
        }
        for b in [16, 64, 1024] {
            c.push(Case::new("gae-zero", &[("B", b), ("T", 1024)], th).family("gae-B"));
        }
        let gpt = [("V", 8192), ("C", 128), ("L", 4), ("H", 4)];
        let with = |extra: &[(&'static str, i64)]| -> Vec<(&'static str, i64)> {
            gpt.iter().chain(extra).copied().collect()
        };
        // Training steps on the sft-small GPT: the batch at 1 and 2 threads, then scaling.
        for t in [1, 2] {
            c.push(Case::new("sft-step", &with(&[("B", 16), ("T", 128)]), t));
        }
        for b in [4, 8, 32] {
            c.push(Case::new("sft-step", &with(&[("B", b), ("T", 128)]), th).family("sft-B"));
        }
        for t in [32, 64] {
            c.push(Case::new("sft-step", &with(&[("B", 16), ("T", t)]), th).family("sft-T"));
        }
        // DPO and RM at the small scale's batch: 16 pairs of 8 prompt + 24 completion tokens.
        c.push(Case::new("dpo-step", &with(&[("P", 16), ("S", 32)]), th));
        c.push(Case::new("rm-step", &with(&[("P", 16), ("S", 32)]), th));
        // The allocator policy's share: the three training steps with glibc's defaults.
        for (w, extra) in [
            ("sft-step", [("B", 16), ("T", 128)]),
            ("dpo-step", [("P", 16), ("S", 32)]),
            ("rm-step", [("P", 16), ("S", 32)]),
        ] {
            let mut k = Case::new(w, &with(&extra), th).family("malloc");
            k.system_malloc = true;
            c.push(k);
        }
        // Sampling: the two shapes, then cost vs batch.
        let v512 = [
            ("V", 512),
            ("C", 128),
            ("L", 4),
            ("H", 4),
            ("B", 8),
            ("N", 128),
        ];
        c.push(Case::new("sample", &v512, th));
        c.push(Case::new("sample", &with(&[("B", 64), ("N", 32)]), th));
        for b in [1, 8, 256] {
            c.push(Case::new("sample", &with(&[("B", b), ("N", 32)]), th).family("sample-B"));
        }
        c.push(Case::new("decode-smollm2", &[("B", 1), ("N", 32)], 1));
        // One PPO iteration at the rollout size above, ppo-small's epochs and minibatches.
        c.push(Case::new(
            "ppo-iteration",
            &with(&[("B", 64), ("N", 32), ("E", 4), ("M", 4)]),
            th,
        ));
        // Thread policy: GAE and an SFT step at 1 and 2 threads, idle vs a competing process, with
        // libgomp's default and passive wait policies.
        for (w, params) in [
            ("gae-zero", vec![("B", 256), ("T", 1024)]),
            ("sft-step", with(&[("B", 16), ("T", 128)])),
        ] {
            for t in [1, 2] {
                for competitors in [0, 1, 2] {
                    for policy in ["default", "passive"] {
                        if competitors == 0 && policy == "default" {
                            continue; // the idle default rows are above
                        }
                        let mut k = Case::new(w, &params, t).family("threads");
                        k.competitors = competitors;
                        k.wait_policy = policy.into();
                        c.push(k);
                    }
                }
            }
        }
    }
    for k in &mut c {
        fill_work(k);
    }
    c
}

/// FLOPs / bytes / tokens of one repetition (see the module docs).
fn fill_work(k: &mut Case) {
    let g = |n: &str| k.params.get(n).copied().unwrap_or(0) as f64;
    let (v, c, l) = (g("V"), g("C"), g("L"));
    let n_blocks = 12.0 * l * c * c;
    match k.workload.as_str() {
        "matmul" => k.flops = Some(2.0 * g("n").powi(3)),
        "copy" => k.bytes = Some(8.0 * g("n")),
        "read" => k.bytes = Some(4.0 * g("n")),
        "gae-zero" | "gae-skip" => k.bytes = Some(17.0 * g("B") * g("T")), // r, v f32 + mask + 2 outputs
        "sft-step" => {
            let tokens = g("B") * g("T");
            k.tokens = Some(tokens);
            k.flops = Some((6.0 * (n_blocks + v * c) + 12.0 * l * c * g("T")) * tokens);
        }
        "dpo-step" | "rm-step" => {
            let tokens = 2.0 * g("P") * g("S");
            let head = if k.workload == "dpo-step" { v * c } else { 0.0 };
            k.tokens = Some(tokens);
            k.flops = Some((6.0 * (n_blocks + head) + 12.0 * l * c * g("S")) * tokens);
        }
        "sample" => {
            let tokens = g("B") * g("N");
            let ctx = PROMPT_LEN as f64 + g("N") / 2.0;
            k.tokens = Some(tokens);
            k.flops = Some((2.0 * (n_blocks + v * c) + 4.0 * l * c * ctx) * tokens);
        }
        "decode-smollm2" => k.tokens = Some(g("B") * g("N")), // bytes and FLOPs once loaded
        "ppo-iteration" => {
            // Rollout (forward only), three scoring passes (actor, reference, critic), then E epochs
            // of actor and critic forward + backward, over B sequences of PROMPT_LEN + N tokens.
            let (b, n) = (g("B"), g("N"));
            let seq = PROMPT_LEN as f64 + n;
            let per_token_fwd = 2.0 * (n_blocks + v * c) + 4.0 * l * c * seq;
            let sampled = b * n;
            k.tokens = Some(sampled);
            k.flops =
                Some(per_token_fwd * (sampled + 3.0 * b * seq + 2.0 * 3.0 * g("E") * b * seq));
        }
        _ => {}
    }
}

/// SmolLM2-135M-Instruct under the data directory (`datasets/fetch.py`).
pub(crate) const SMOLLM2_GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Prompt tokens of the sampling and preference workloads.
pub(crate) const PROMPT_LEN: i64 = 8;

pub use super::perf_workloads::run_case;

/// SmolLM2's weight bytes read per decoded token, in f32 and in bf16: every parameter once (the tied
/// embeddings are one tensor), counted from the GGUF's tensor table without dequantising anything.
/// `None` when the file is missing.
fn smollm2_facts(data_dir: &Path) -> Option<(f64, f64)> {
    let file = crate::model::gguf::GgufFile::open(data_dir.join(SMOLLM2_GGUF)).ok()?;
    let params: f64 = file.tensors.iter().map(|t| t.n_elements() as f64).sum();
    Some((4.0 * params, 2.0 * params))
}

/// Runs a case in a fresh child process (`rlhf-lab bench --case <json>`), beside `k.competitors` busy
/// loops and with `OMP_WAIT_POLICY=PASSIVE` if asked.
fn run_in_child(k: &Case, quick: bool) -> Result<Timing> {
    let exe = std::env::current_exe().map_err(|e| RlhfError::io("current_exe", e))?;
    let json = serde_json::to_string(k).map_err(|e| RlhfError::invalid("case", e.to_string()))?;
    let mut competitors = Vec::new();
    for _ in 0..k.competitors {
        competitors.push(
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .map_err(|e| RlhfError::io("sh (competing process)", e))?,
        );
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "--case", &json]);
    if quick {
        cmd.arg("--quick");
    }
    if k.system_malloc {
        cmd.env("RLHF_LAB_MALLOC", "system");
    } else {
        cmd.env_remove("RLHF_LAB_MALLOC");
    }
    if k.wait_policy == "passive" {
        cmd.env("OMP_WAIT_POLICY", "PASSIVE");
    } else {
        cmd.env_remove("OMP_WAIT_POLICY");
    }
    let out = cmd.output();
    for mut c in competitors {
        let _ = c.kill();
        let _ = c.wait();
    }
    let out = out.map_err(|e| RlhfError::io("rlhf-lab bench --case", e))?;
    if !out.status.success() {
        return Err(RlhfError::invalid(
            "case",
            format!(
                "{} failed in its child process: {}",
                k.key(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| RlhfError::invalid("case", format!("{}: child output: {e}", k.key())))
}

/// A running `benches/anchors/perf_anchors.py`: one case per line in, one timing per line out.
struct AnchorServer {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl AnchorServer {
    fn start(python: &Path, quick: bool, env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = std::process::Command::new(python);
        cmd.arg("benches/anchors/perf_anchors.py")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .envs(env.iter().copied());
        if quick {
            cmd.arg("--quick");
        }
        let mut child = cmd.spawn().map_err(|e| RlhfError::io(python, e))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| RlhfError::invalid("anchors", "no stdout"))?;
        Ok(AnchorServer {
            child,
            out: std::io::BufReader::new(out),
        })
    }

    fn time(&mut self, k: &Case) -> Result<Anchor> {
        use std::io::{BufRead, Write};
        let line =
            serde_json::to_string(k).map_err(|e| RlhfError::invalid("case", e.to_string()))?;
        let failed = |what: String| {
            RlhfError::invalid(
                "anchors",
                format!("benches/anchors/perf_anchors.py on {}: {what}", k.key()),
            )
        };
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| failed("stdin closed".into()))?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| failed(e.to_string()))?;
        let mut reply = String::new();
        self.out
            .read_line(&mut reply)
            .map_err(|e| failed(e.to_string()))?;
        if reply.is_empty() {
            return Err(failed("exited (its error is above)".into()));
        }
        serde_json::from_str(&reply).map_err(|e| failed(format!("{e}: {reply}")))
    }
}

impl Drop for AnchorServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // EOF: the script's loop ends
        let _ = self.child.wait();
    }
}

/// Whether a case has a PyTorch anchor: no competing process, the default wait policy, rlhf-lab's
/// allocator policy.
fn anchored(k: &Case) -> bool {
    k.competitors == 0 && k.wait_policy == "default" && !k.system_malloc
}

/// Whether a case is also timed by PyTorch with rlhf-lab's allocator policy: the training steps of the
/// main table.
fn anchored_same_malloc(k: &Case) -> bool {
    anchored(k)
        && k.family.is_none()
        && matches!(k.workload.as_str(), "sft-step" | "dpo-step" | "rm-step")
}

/// Options of [`run_suite`].
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub quick: bool,
    /// Threads of the main rows.
    pub threads: i32,
    /// Only the workloads whose name starts with one of these (empty: all).
    pub only: Vec<String>,
    /// Where `cases.json` goes.
    pub work_dir: PathBuf,
    /// The markdown report to write (its figures beside it, in `<stem>/`).
    pub report: PathBuf,
    /// Run the PyTorch anchors with this Python (the project venv's); `None`: no anchors.
    pub python: Option<PathBuf>,
    pub data_dir: PathBuf,
}

/// Runs every planned case (with a progress bar), each followed at once by its PyTorch anchor (so
/// both see the same machine state), then writes the report. Returns the cases with their
/// measurements.
pub fn run_suite(opts: &SuiteOptions) -> Result<Vec<Case>> {
    let budget = Budget::of(opts.quick);
    let mut cases: Vec<Case> = plan(opts.quick, opts.threads)
        .into_iter()
        .filter(|k| opts.only.is_empty() || opts.only.iter().any(|o| k.workload.starts_with(o)))
        .collect();
    std::fs::create_dir_all(&opts.work_dir).map_err(|e| RlhfError::io(&opts.work_dir, e))?;
    // PyTorch as shipped, and PyTorch with rlhf-lab's allocator policy through glibc's environment.
    let mut servers = match &opts.python {
        Some(py) => Some((
            AnchorServer::start(py, opts.quick, &[])?,
            AnchorServer::start(
                py,
                opts.quick,
                &[
                    ("MALLOC_MMAP_MAX_", "0"),
                    ("MALLOC_TRIM_THRESHOLD_", "2147483647"),
                ],
            )?,
        )),
        None => None,
    };
    let bar = indicatif::ProgressBar::new(cases.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("bench {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let smol = smollm2_facts(&opts.data_dir);
    for k in &mut cases {
        bar.set_message(k.key());
        if k.workload == "decode-smollm2" {
            match smol {
                Some((bytes_f32, _)) => {
                    let n = k.tokens.unwrap_or(0.0);
                    k.bytes = Some(bytes_f32 * n);
                    k.flops = Some(bytes_f32 / 2.0 * n); // 2 FLOPs per parameter, 4 bytes each
                }
                None => {
                    k.note = Some("SmolLM2 GGUF missing: run datasets/fetch.py".into());
                    bar.inc(1);
                    continue;
                }
            }
        }
        let t = if k.needs_child() {
            run_in_child(k, opts.quick)
        } else {
            run_case(k, budget, &opts.data_dir)
        };
        match t {
            Ok(t) => k.rust = Some(t),
            Err(e) => k.note = Some(e.to_string()),
        }
        if let Some((plain, same_malloc)) = servers.as_mut() {
            if anchored(k) {
                k.anchor = Some(plain.time(k)?);
            }
            if anchored_same_malloc(k) {
                k.anchor_same_malloc = Some(same_malloc.time(k)?);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    drop(servers);
    crate::io::write_json(opts.work_dir.join("cases.json"), &cases)?;
    crate::pipeline::perf_report::write(&opts.report, &cases, smol, opts)?;
    Ok(cases)
}
