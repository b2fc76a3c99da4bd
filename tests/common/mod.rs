//! Helpers shared by the integration tests.
#![allow(dead_code)]
pub mod tiny;
use tch::{Kind, Tensor};

pub fn t1(x: &[f64]) -> Tensor {
    Tensor::from_slice(x).to_kind(Kind::Double)
}

pub fn t2(rows: &[&[f64]]) -> Tensor {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0) as i64;
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat)
        .reshape([rows.len() as i64, cols])
        .to_kind(Kind::Double)
}

pub fn v1(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

pub fn s(t: &Tensor) -> f64 {
    t.detach().to_kind(Kind::Double).double_value(&[])
}

/// Max |a − b| over all entries.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    s(&(a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max())
}

#[track_caller]
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let d = max_abs_diff(a, b);
    assert!(
        d <= tol,
        "max |a − b| = {d:e} > {tol:e}\n a = {:?}\n b = {:?}",
        v1(a),
        v1(b)
    );
}

/// Round for stable snapshots.
pub fn r(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

pub fn rv(x: &[f64], digits: i32) -> Vec<f64> {
    x.iter().map(|v| r(*v, digits)).collect()
}
