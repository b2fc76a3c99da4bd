//! Tensors as JSON: nested arrays of numbers ⇄ `tch::Tensor`. Used by `rlhf-lab calc`.
//!
//! JSON has no NaN/Inf literals; the strings `"NaN"`, `"Infinity"`, `"-Infinity"` are accepted so that
//! such values can be sent (and then rejected with a typed error by the primitives).

use crate::error::{Result, RlhfError};
use serde_json::Value;
use tch::{Kind, Tensor};

fn number(arg: &str, v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| bad(arg, "a number out of f64 range")),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => match s.as_str() {
            "NaN" | "nan" => Ok(f64::NAN),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            _ => Err(bad(
                arg,
                &format!("expected a number, got the string {s:?}"),
            )),
        },
        other => Err(bad(arg, &format!("expected a number, got {other}"))),
    }
}

fn bad(arg: &str, reason: &str) -> RlhfError {
    RlhfError::invalid(arg, reason)
}

/// Flatten a nested array, checking it is rectangular. Returns (shape, data).
pub fn nested(arg: &str, v: &Value) -> Result<(Vec<i64>, Vec<f64>)> {
    struct Walk {
        shape: Vec<i64>,
        data: Vec<f64>,
        /// Depth at which scalars live, fixed by the first scalar seen.
        leaf_depth: Option<usize>,
    }
    fn walk(arg: &str, v: &Value, depth: usize, w: &mut Walk) -> Result<()> {
        match v {
            Value::Array(items) => {
                if w.leaf_depth.is_some_and(|l| depth >= l) {
                    return Err(bad(arg, "ragged nested array: mixed scalars and arrays"));
                }
                if w.shape.len() == depth {
                    w.shape.push(items.len() as i64);
                } else if w.shape.len() < depth || w.shape[depth] != items.len() as i64 {
                    return Err(bad(
                        arg,
                        "ragged nested array: all rows must have the same length",
                    ));
                }
                items.iter().try_for_each(|it| walk(arg, it, depth + 1, w))
            }
            scalar => {
                if w.shape.len() != depth || w.leaf_depth.is_some_and(|l| l != depth) {
                    return Err(bad(arg, "ragged nested array: mixed scalars and arrays"));
                }
                w.leaf_depth = Some(depth);
                w.data.push(number(arg, scalar)?);
                Ok(())
            }
        }
    }
    let mut w = Walk {
        shape: vec![],
        data: vec![],
        leaf_depth: None,
    };
    walk(arg, v, 0, &mut w)?;
    if w.data.len() as i64 != w.shape.iter().product::<i64>() {
        return Err(bad(
            arg,
            "ragged nested array: element count does not match the shape",
        ));
    }
    Ok((w.shape, w.data))
}

/// JSON → float tensor of `kind` (f32 or f64).
pub fn to_tensor(arg: &str, v: &Value, kind: Kind) -> Result<Tensor> {
    let (shape, data) = nested(arg, v)?;
    Ok(Tensor::from_slice(&data).reshape(&shape).to_kind(kind))
}

/// JSON → int64 tensor (token ids); every entry must be an integer.
pub fn to_long(arg: &str, v: &Value) -> Result<Tensor> {
    let (shape, data) = nested(arg, v)?;
    if data.iter().any(|x| x.fract() != 0.0 || !x.is_finite()) {
        return Err(bad(arg, "expected integers"));
    }
    let ints: Vec<i64> = data.iter().map(|x| *x as i64).collect();
    Ok(Tensor::from_slice(&ints).reshape(&shape))
}

/// Tensor → JSON nested arrays (via f64). Non-finite values become `"NaN"`/`"Infinity"` strings.
pub fn from_tensor(t: &Tensor) -> Value {
    let t = t
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Double)
        .contiguous();
    let shape = t.size();
    let data = Vec::<f64>::try_from(t.flatten(0, -1)).unwrap_or_default();
    fn num(x: f64) -> Value {
        if x.is_nan() {
            Value::from("NaN")
        } else if x.is_infinite() {
            Value::from(if x > 0.0 { "Infinity" } else { "-Infinity" })
        } else {
            serde_json::Number::from_f64(x)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
    }
    fn build(shape: &[i64], data: &[f64]) -> Value {
        if shape.is_empty() {
            return num(data[0]);
        }
        let n = shape[0] as usize;
        let stride = data.len().checked_div(n).unwrap_or(0);
        Value::Array(
            (0..n)
                .map(|i| build(&shape[1..], &data[i * stride..(i + 1) * stride]))
                .collect(),
        )
    }
    if shape.is_empty() {
        return num(data.first().copied().unwrap_or(f64::NAN));
    }
    build(&shape, &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_arrays_round_trip_with_shape() {
        let v = json!([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        let t = to_tensor("x", &v, Kind::Double).unwrap();
        assert_eq!(t.size(), vec![2, 3]);
        assert_eq!(from_tensor(&t), v);
        assert_eq!(
            from_tensor(&to_tensor("x", &json!(2.5), Kind::Double).unwrap()),
            json!(2.5)
        );
    }

    #[test]
    fn ragged_and_non_numeric_input_is_rejected() {
        for bad in [
            json!([[1.0, 2.0], [3.0]]),
            json!([1.0, [2.0]]),
            json!([[1.0], 2.0]),
            json!(["x"]),
            json!([null]),
        ] {
            assert!(
                matches!(nested("x", &bad), Err(RlhfError::Invalid { .. })),
                "{bad}"
            );
        }
        assert!(to_long("labels", &json!([1.5])).is_err());
    }

    #[test]
    fn non_finite_values_travel_as_strings() {
        let t = to_tensor(
            "x",
            &json!(["NaN", "Infinity", "-Infinity", 1]),
            Kind::Double,
        )
        .unwrap();
        assert_eq!(
            from_tensor(&t),
            json!(["NaN", "Infinity", "-Infinity", 1.0])
        );
    }
}
