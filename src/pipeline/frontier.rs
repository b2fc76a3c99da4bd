//! The reward–KL frontier (Rafailov et al. 2023, Figure 2): every evaluation of every run is a point
//! (sequence KL(π ‖ π_ref), mean ground-truth reward); per algorithm the upper envelope of its points,
//! and its reward at matched KL, interpolated on each seed's envelope, as mean ± std over seeds.

use serde::{Deserialize, Serialize};

/// One evaluation of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Algorithm family as plotted (`DPO`, `PPO`, `PPO-GT`, `Best-of-N (RM)`, …).
    pub algorithm: String,
    /// The swept setting of its run (`beta=0.1`, `target_kl=6`, `N=16`, …).
    pub setting: String,
    pub seed: u64,
    /// Training step of the evaluation (0: the SFT model itself).
    pub step: u64,
    /// Sequence-level KL(π ‖ π_ref), exact over the vocabulary (nats).
    pub kl: f64,
    /// Mean ground-truth reward: p(positive) of the classifier.
    pub reward: f64,
}

/// The upper envelope (Pareto frontier) of `(kl, reward)` points: sorted by KL, every point with a
/// reward strictly above every point of smaller or equal KL. Points with non-finite coordinates are
/// skipped.
pub fn upper_envelope(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(k, r)| k.is_finite() && r.is_finite())
        .collect();
    // By KL ascending, and at equal KL the highest reward first.
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (k, r) in p {
        if out.last().is_none_or(|&(_, best)| r > best) {
            out.push((k, r));
        }
    }
    out
}

/// The envelope's reward at KL `x`: the best reward reachable with KL ≤ x, linearly interpolated between
/// envelope points (a policy mixing two runs' policies reaches the chord). `None` below the envelope's
/// smallest KL; the last point's reward beyond its largest KL is *not* extrapolated either (`None`), so
/// an algorithm is compared only where it has points.
pub fn envelope_at(envelope: &[(f64, f64)], x: f64) -> Option<f64> {
    let first = envelope.first()?;
    let last = envelope.last()?;
    if x < first.0 || x > last.0 {
        return None;
    }
    for w in envelope.windows(2) {
        let ((k0, r0), (k1, r1)) = (w[0], w[1]);
        if x >= k0 && x <= k1 {
            if k1 == k0 {
                return Some(r1.max(r0));
            }
            return Some(r0 + (r1 - r0) * (x - k0) / (k1 - k0));
        }
    }
    Some(last.1)
}

/// Mean and sample standard deviation (n − 1) of `xs`; the std of one value is 0.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Reward at matched KL of one algorithm: per seed the envelope of that seed's points, read at `kl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchedKl {
    pub algorithm: String,
    pub kl: f64,
    /// Seeds whose envelope covers `kl`.
    pub n_seeds: usize,
    pub mean: Option<f64>,
    pub std: Option<f64>,
}

/// [`MatchedKl`] for every algorithm of `points` and every KL of `grid`.
pub fn matched_kl(points: &[Point], grid: &[f64]) -> Vec<MatchedKl> {
    let mut algorithms: Vec<&str> = points.iter().map(|p| p.algorithm.as_str()).collect();
    algorithms.sort();
    algorithms.dedup();
    let mut out = Vec::new();
    for alg in algorithms {
        let mut seeds: Vec<u64> = points
            .iter()
            .filter(|p| p.algorithm == alg)
            .map(|p| p.seed)
            .collect();
        seeds.sort();
        seeds.dedup();
        let envelopes: Vec<Vec<(f64, f64)>> = seeds
            .iter()
            .map(|&s| {
                let pts: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| p.algorithm == alg && p.seed == s)
                    .map(|p| (p.kl, p.reward))
                    .collect();
                upper_envelope(&pts)
            })
            .collect();
        for &x in grid {
            let vals: Vec<f64> = envelopes.iter().filter_map(|e| envelope_at(e, x)).collect();
            let (mean, std) = if vals.is_empty() {
                (None, None)
            } else {
                let (m, s) = mean_std(&vals);
                (Some(m), Some(s))
            };
            out.push(MatchedKl {
                algorithm: alg.to_string(),
                kl: x,
                n_seeds: vals.len(),
                mean,
                std,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keeps_only_undominated_points() {
        let pts = [
            (3.0, 0.7),
            (1.0, 0.6),
            (2.0, 0.5),
            (4.0, 0.9),
            (0.0, 0.5),
            (5.0, 0.8),
        ];
        assert_eq!(
            upper_envelope(&pts),
            vec![(0.0, 0.5), (1.0, 0.6), (3.0, 0.7), (4.0, 0.9)]
        );
        let env = upper_envelope(&pts);
        assert!((envelope_at(&env, 2.0).unwrap() - 0.65).abs() < 1e-12);
        assert_eq!(envelope_at(&env, -1.0), None);
        assert_eq!(envelope_at(&env, 4.5), None);
        assert_eq!(envelope_at(&env, 4.0), Some(0.9));
    }

    #[test]
    fn matched_kl_averages_seed_envelopes() {
        let p = |seed, kl, reward| Point {
            algorithm: "DPO".into(),
            setting: "beta=0.1".into(),
            seed,
            step: 0,
            kl,
            reward,
        };
        let pts = vec![
            p(0, 0.0, 0.5),
            p(0, 2.0, 0.9),
            p(1, 0.0, 0.5),
            p(1, 2.0, 0.7),
            p(2, 0.0, 0.5),
        ];
        let m = matched_kl(&pts, &[1.0]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].n_seeds, 2);
        assert!((m[0].mean.unwrap() - 0.65).abs() < 1e-12);
        assert!((m[0].std.unwrap() - (0.005f64).sqrt()).abs() < 1e-12);
    }
}
