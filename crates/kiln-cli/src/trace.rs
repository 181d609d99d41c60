//! Chrome trace-event JSON (the format chrome://tracing and Perfetto open): one complete event
//! ("ph": "X") per layer run, with start and duration in microseconds.

use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// One layer run, as the profiler saw it.
#[derive(Clone, Debug)]
pub struct LayerRecord {
    pub layer: String,
    pub op: String,
    pub start: Instant,
    pub elapsed: Duration,
}

#[derive(Serialize)]
struct Event<'a> {
    name: &'a str,
    cat: &'a str,
    ph: &'static str,
    /// Microseconds since the first recorded layer started.
    ts: f64,
    dur: f64,
    pid: u32,
    tid: u32,
    args: Args,
}

#[derive(Serialize)]
struct Args {
    iteration: usize,
}

#[derive(Serialize)]
struct Trace<'a> {
    #[serde(rename = "traceEvents")]
    trace_events: Vec<Event<'a>>,
    #[serde(rename = "displayTimeUnit")]
    display_time_unit: &'static str,
}

/// The trace of `iterations` (each the layer records of one run, in order) as JSON: name =
/// layer, cat = op; timestamps count from the first record's start.
pub fn to_json(iterations: &[Vec<LayerRecord>]) -> String {
    let origin = iterations.iter().flatten().map(|r| r.start).min();
    let events = iterations
        .iter()
        .enumerate()
        .flat_map(|(iteration, records)| {
            records.iter().map(move |r| Event {
                name: &r.layer,
                cat: &r.op,
                ph: "X",
                ts: micros(r.start.saturating_duration_since(origin.expect("records exist"))),
                dur: micros(r.elapsed),
                pid: 1,
                tid: 1,
                args: Args { iteration },
            })
        })
        .collect();
    serde_json::to_string(&Trace { trace_events: events, display_time_unit: "ms" }).expect("a trace serializes")
}

/// Write the trace of `iterations` to `path`.
pub fn write(path: &Path, iterations: &[Vec<LayerRecord>]) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(to_json(iterations).as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_events_in_microseconds() {
        let t0 = Instant::now();
        let rec = |layer: &str, op: &str, at_us: u64, dur_us: u64| LayerRecord {
            layer: layer.into(),
            op: op.into(),
            start: t0 + Duration::from_micros(at_us),
            elapsed: Duration::from_micros(dur_us),
        };
        let json = to_json(&[
            vec![rec("conv", "Conv", 0, 30), rec("relu", "Relu", 30, 5)],
            vec![rec("conv", "Conv", 100, 28)],
        ]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let events = v["traceEvents"].as_array().unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[1]["name"], "relu");
        assert_eq!(events[1]["cat"], "Relu");
        assert_eq!(events[1]["ph"], "X");
        assert!((events[1]["ts"].as_f64().unwrap() - 30.0).abs() < 1e-6);
        assert!((events[2]["dur"].as_f64().unwrap() - 28.0).abs() < 1e-6);
        assert_eq!(events[2]["args"]["iteration"], 1);
    }
}
