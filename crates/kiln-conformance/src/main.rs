//! kiln's ONNX node-conformance harness.
//!
//! Reads the cases written by `scripts/gen_conformance.py` (model.onnx + test_data_set_N), runs
//! every in-scope case through import and CPU execution, compares with ONNX's expected outputs
//! (|got - want| <= atol + rtol·|want|, NaN equal to NaN, dtype and shape exact), prints one line
//! per case and a closing `N passed, N failed, N skipped` line, and writes a Markdown report.
//! With `--expected FILE`, exits non-zero if any case listed there no longer passes; with
//! `--optimize`, every case first goes through kiln's graph simplification passes; with
//! `--engine`, every case takes the whole engine path: built at the highest optimization level
//! (shape profile from the test data), saved as a plan, loaded back and run in an execution
//! context (`--no-plan` skips the save and load).

use anyhow::{bail, Context, Result};
use kiln::{Value, ValueType};
use kiln_onnx::proto::{OptionalProto, SequenceProto, TensorProto};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

struct Args {
    cases: PathBuf,
    report: Option<PathBuf>,
    expected: Option<PathBuf>,
    write_passing: Option<PathBuf>,
    filter: Option<String>,
    quiet: bool,
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Import and run on the reference executor.
    Plain,
    /// Simplification passes first.
    Optimize,
    /// Build an engine; with `plan`, save it and load it back before running.
    Engine { plan: bool },
}

const USAGE: &str = "usage: kiln-conformance CASES_DIR [--report REPORT.md] [--expected LIST] \
[--write-passing LIST] [--filter SUBSTR] [--optimize | --engine [--no-plan]] [--quiet]   (generate cases with scripts/gen_conformance.py)";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        cases: PathBuf::new(),
        report: None,
        expected: None,
        write_passing: None,
        filter: None,
        quiet: false,
        mode: Mode::Plain,
    };
    let mut no_plan = false;
    let mut it = std::env::args().skip(1);
    let mut positional = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--report" => args.report = Some(it.next().context("--report needs a path")?.into()),
            "--expected" => args.expected = Some(it.next().context("--expected needs a path")?.into()),
            "--write-passing" => args.write_passing = Some(it.next().context("--write-passing needs a path")?.into()),
            "--filter" => args.filter = Some(it.next().context("--filter needs a substring")?),
            "--quiet" | "-q" => args.quiet = true,
            "--optimize" => args.mode = Mode::Optimize,
            "--engine" => args.mode = Mode::Engine { plan: true },
            "--no-plan" => no_plan = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other if !other.starts_with('-') => positional = Some(other.to_string()),
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    args.cases = positional.context(USAGE)?.into();
    if no_plan {
        match args.mode {
            Mode::Engine { .. } => args.mode = Mode::Engine { plan: false },
            _ => bail!("--no-plan goes with --engine"),
        }
    }
    Ok(args)
}

struct CaseInfo {
    name: String,
    scope: String,
    ops: Vec<String>,
    rtol: f64,
    atol: f64,
}

enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let manifest = std::fs::read_to_string(args.cases.join("manifest.tsv")).with_context(|| {
        format!("reading {}/manifest.tsv (run scripts/gen_conformance.py first)", args.cases.display())
    })?;
    let mut cases = Vec::new();
    for line in manifest.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 5 {
            bail!("malformed manifest line: {line}");
        }
        cases.push(CaseInfo {
            name: f[0].into(),
            scope: f[1].into(),
            ops: f[2].split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
            rtol: f[3].parse()?,
            atol: f[4].parse()?,
        });
    }
    // A kernel bug must fail its case, not end the run.
    std::panic::set_hook(Box::new(|_| {}));
    let mut results: Vec<(&CaseInfo, Outcome)> = Vec::new();
    for case in &cases {
        if let Some(f) = &args.filter {
            if !case.name.contains(f.as_str()) {
                continue;
            }
        }
        let outcome = if case.scope != "in" {
            Outcome::Skip(format!("out of scope: {}", case.scope))
        } else {
            let dir = args.cases.join(&case.name);
            match std::panic::catch_unwind(|| run_case(&dir, case.rtol, case.atol, args.mode)) {
                Ok(Ok(())) => Outcome::Pass,
                Ok(Err(e)) => Outcome::Fail(format!("{e:#}").replace('\n', " ")),
                Err(p) => Outcome::Fail(format!("PANIC: {}", panic_message(&p))),
            }
        };
        if !args.quiet || matches!(outcome, Outcome::Fail(_)) {
            match &outcome {
                Outcome::Pass => println!("PASS {}", case.name),
                Outcome::Fail(r) => println!("FAIL {}: {}", case.name, truncate(r, 300)),
                Outcome::Skip(r) => println!("SKIP {}: {r}", case.name),
            }
        }
        results.push((case, outcome));
    }
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.1)).count();
    let passed = count(|o| matches!(o, Outcome::Pass));
    let failed = count(|o| matches!(o, Outcome::Fail(_)));
    let skipped = count(|o| matches!(o, Outcome::Skip(_)));
    if let Some(path) = &args.report {
        std::fs::write(path, report(&results, passed, failed, skipped))?;
    }
    if let Some(path) = &args.write_passing {
        let mut list: Vec<&str> =
            results.iter().filter(|r| matches!(r.1, Outcome::Pass)).map(|r| r.0.name.as_str()).collect();
        list.sort();
        std::fs::write(path, list.join("\n") + "\n")?;
    }
    let mut regressions = Vec::new();
    if let Some(path) = &args.expected {
        let outcomes: HashMap<&str, &Outcome> = results.iter().map(|(c, o)| (c.name.as_str(), o)).collect();
        let listed = std::fs::read_to_string(path)?;
        for name in listed.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            match outcomes.get(name) {
                Some(Outcome::Pass) => {}
                Some(_) => regressions.push(name.to_string()),
                None if args.filter.is_none() => regressions.push(format!("{name} (case missing)")),
                None => {}
            }
        }
    }
    report_placements(&results)?;
    let in_scope = passed + failed;
    println!("in scope: {in_scope}; pass rate {:.1}%", 100.0 * passed as f64 / in_scope.max(1) as f64);
    if !regressions.is_empty() {
        println!("REGRESSIONS: {} expected-passing cases failed: {}", regressions.len(), regressions.join(", "));
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if !regressions.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn run_case(dir: &Path, rtol: f64, atol: f64, mode: Mode) -> Result<()> {
    let model = kiln_onnx::import_file(dir.join("model.onnx"))?;
    let net = if mode == Mode::Optimize { kiln::optimize(model.network)?.0 } else { model.network };
    let net = &net;
    let mut sets = Vec::new();
    while dir.join(format!("test_data_set_{}", sets.len())).exists() {
        let ds = dir.join(format!("test_data_set_{}", sets.len()));
        let mut inputs = HashMap::new();
        for (k, &id) in net.inputs().iter().enumerate() {
            let info = net.tensor(id);
            let v = read_value(&ds.join(format!("input_{k}.pb")), info.ty.as_ref())?;
            inputs.insert(info.name.clone(), v);
        }
        sets.push((ds, inputs));
    }
    let mut engine_context = match mode {
        Mode::Engine { plan } => Some(build_engine(dir, net, &sets, plan)?.create_context()),
        _ => None,
    };
    for (ds, inputs) in sets {
        let outputs = match engine_context.as_mut() {
            Some(ctx) => {
                for (name, v) in &inputs {
                    ctx.set_input(name, v)?;
                }
                ctx.execute()?;
                ctx.outputs()?
            }
            None => kiln::run(net, inputs)?,
        };
        for (k, (name, got)) in outputs.iter().enumerate() {
            let want_ty = net.tensor(net.outputs()[k]).ty.clone();
            let want = read_value(&ds.join(format!("output_{k}.pb")), want_ty.as_ref())?;
            compare(&want, got, rtol, atol).with_context(|| format!("output '{name}'"))?;
        }
    }
    Ok(())
}

/// The engine for a case: a shape profile spanning the test data's input shapes, the highest
/// optimization level, and (with `plan`) a round trip through a plan file.
fn build_engine(
    dir: &Path,
    net: &kiln::Network,
    sets: &[(PathBuf, HashMap<String, Value>)],
    plan: bool,
) -> Result<std::sync::Arc<kiln::Engine>> {
    let mut config = kiln::BuilderConfig::default();
    for (_, inputs) in sets {
        for (name, v) in inputs {
            let Some(t) = v.as_tensor() else { continue };
            let shape = t.shape().to_vec();
            let range =
                config.profile.inputs.entry(name.clone()).or_insert_with(|| kiln::ShapeRange::fixed(shape.clone()));
            if range.min.len() == shape.len() {
                for (axis, &d) in shape.iter().enumerate() {
                    range.min[axis] = range.min[axis].min(d);
                    range.max[axis] = range.max[axis].max(d);
                    range.opt[axis] = range.max[axis];
                }
            }
        }
    }
    let engine = kiln::build(net, &config)?;
    record_placement(dir, &engine);
    if !plan {
        return Ok(std::sync::Arc::new(engine));
    }
    let scratch = std::env::temp_dir().join(format!("kiln-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let path = scratch.join(format!("{}.plan", dir.file_name().and_then(|n| n.to_str()).unwrap_or("case")));
    engine.save(&path)?;
    let loaded = kiln::load_plan(&path);
    let _ = std::fs::remove_file(&path);
    Ok(std::sync::Arc::new(loaded?))
}

/// Per case built for a device with its own memory: whether every layer runs there ("gpu") or
/// some run on the CPU ("mixed"), so the run can say how much of the suite the GPU covers.
static PLACEMENTS: std::sync::Mutex<Vec<(String, &'static str, String)>> = std::sync::Mutex::new(Vec::new());

/// With `KILN_GPU_CENSUS=1` and no GPU engine, the CUDA backend's placement is computed from the
/// CPU engine's graph instead (no device needed; fp32 placement is decided the same way).
fn record_placement(dir: &Path, engine: &kiln::Engine) {
    let census = || std::env::var_os("KILN_GPU_CENSUS").is_some().then(|| kiln::cuda::placement_census(engine.graph()));
    let Some(places) = engine.device_placements().or_else(census) else { return };
    let host: Vec<String> = places
        .iter()
        .zip(&engine.graph().layers)
        .filter(|(p, _)| p.starts_with("cpu"))
        .map(|(p, l)| format!("{} {p}", l.layer.op))
        .collect();
    let class = if host.is_empty() { "gpu" } else { "mixed" };
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    PLACEMENTS.lock().unwrap_or_else(|e| e.into_inner()).push((name, class, host.join("; ")));
}

/// With `KILN_PLACEMENT_LOG=FILE`: one line per case, its class and its CPU layers.
fn report_placements(results: &[(&CaseInfo, Outcome)]) -> Result<()> {
    let placements = PLACEMENTS.lock().unwrap_or_else(|e| e.into_inner());
    if placements.is_empty() {
        return Ok(());
    }
    let class: HashMap<&str, &str> = placements.iter().map(|(n, c, _)| (n.as_str(), *c)).collect();
    let passed_on = |c: &str| {
        results
            .iter()
            .filter(|(case, o)| matches!(o, Outcome::Pass) && class.get(case.name.as_str()) == Some(&c))
            .count()
    };
    println!(
        "device: {} passing cases ran entirely on the GPU, {} with some layers on the CPU ({} engines built)",
        passed_on("gpu"),
        passed_on("mixed"),
        placements.len()
    );
    if let Ok(path) = std::env::var("KILN_PLACEMENT_LOG") {
        let text: String = placements.iter().map(|(n, c, h)| format!("{n}\t{c}\t{h}\n")).collect();
        std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

fn read_value(path: &Path, ty: Option<&ValueType>) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(match ty {
        Some(ValueType::Sequence(_)) => kiln_onnx::sequence_from_proto(&SequenceProto::decode(bytes.as_slice())?)?,
        Some(ValueType::Optional(_)) => kiln_onnx::optional_from_proto(&OptionalProto::decode(bytes.as_slice())?)?,
        _ => Value::Tensor(kiln_onnx::tensor_from_proto(&TensorProto::decode(bytes.as_slice())?, None)?),
    })
}

fn compare(want: &Value, got: &Value, rtol: f64, atol: f64) -> Result<()> {
    match (want, got) {
        (Value::Tensor(w), Value::Tensor(g)) => {
            if w.dtype() != g.dtype() {
                bail!("dtype {} expected, got {}", w.dtype(), g.dtype());
            }
            if w.shape() != g.shape() {
                bail!("shape {:?} expected, got {:?}", w.shape(), g.shape());
            }
            let (wv, gv) = (w.to_f64_vec(), g.to_f64_vec());
            let exact_ints = (!w.dtype().is_float()).then(|| (w.to_i64_vec(), g.to_i64_vec()));
            let mut bad = 0;
            let mut first = None;
            for i in 0..wv.len() {
                let ok = if let Some((wi, gi)) = &exact_ints {
                    wi[i] == gi[i]
                } else if wv[i].is_nan() || gv[i].is_nan() {
                    wv[i].is_nan() && gv[i].is_nan()
                } else if wv[i].is_infinite() || gv[i].is_infinite() {
                    wv[i] == gv[i]
                } else {
                    (wv[i] - gv[i]).abs() <= atol + rtol * wv[i].abs()
                };
                if !ok {
                    bad += 1;
                    first.get_or_insert(i);
                }
            }
            if let Some(i) = first {
                bail!(
                    "{bad} of {} values differ; first at flat index {i}: expected {}, got {}",
                    wv.len(),
                    wv[i],
                    gv[i]
                );
            }
            Ok(())
        }
        (Value::Sequence(w), Value::Sequence(g)) => {
            if w.len() != g.len() {
                bail!("sequence of {} expected, got {}", w.len(), g.len());
            }
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                compare(&Value::Tensor(a.clone()), &Value::Tensor(b.clone()), rtol, atol)
                    .with_context(|| format!("element {i}"))?;
            }
            Ok(())
        }
        (Value::Optional(w), Value::Optional(g)) => match (w, g) {
            (None, None) => Ok(()),
            (Some(a), Some(b)) => compare(a, b, rtol, atol),
            _ => bail!("optional: expected {}, got {}", presence(w.is_some()), presence(g.is_some())),
        },
        (Value::Optional(Some(a)), b) => compare(a, b, rtol, atol),
        (a, Value::Optional(Some(b))) => compare(a, b, rtol, atol),
        _ => bail!("expected a {}, got a {}", want.kind_name(), got.kind_name()),
    }
}

fn presence(some: bool) -> &'static str {
    if some {
        "a value"
    } else {
        "empty"
    }
}

/// The op a case is about: the longest of its ops whose name prefixes the case name.
fn primary_op(case: &CaseInfo) -> String {
    let key = case.name.trim_start_matches("test_").replace('_', "").to_lowercase();
    case.ops
        .iter()
        .filter(|op| key.starts_with(&op.to_lowercase()))
        .max_by_key(|op| op.len())
        .or(case.ops.first())
        .cloned()
        .unwrap_or_else(|| "?".into())
}

fn report(results: &[(&CaseInfo, Outcome)], passed: usize, failed: usize, skipped: usize) -> String {
    let mut by_op: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (c, o) in results {
        let e = by_op.entry(primary_op(c)).or_default();
        match o {
            Outcome::Pass => e.0 += 1,
            Outcome::Fail(_) => e.1 += 1,
            Outcome::Skip(_) => e.2 += 1,
        }
    }
    let mut s = String::new();
    s.push_str("# kiln ONNX node conformance report\n\n");
    s.push_str("Generated by `kiln-conformance` over the node cases of onnx==1.23.2 (`scripts/gen_conformance.py`).\n");
    s.push_str("Tolerance: |got − want| ≤ 1e-7 + 1e-3·|want| (ONNX's backend runner), integers exact; dtype and shape must match exactly.\n\n");
    s.push_str(&format!(
        "**{passed} passed, {failed} failed, {skipped} skipped** (in scope: {}; pass rate {:.1}%)\n\n",
        passed + failed,
        100.0 * passed as f64 / (passed + failed).max(1) as f64
    ));
    s.push_str("## By op\n\n| op | passed | failed | skipped |\n|---|---:|---:|---:|\n");
    for (op, (p, f, k)) in &by_op {
        s.push_str(&format!("| {op} | {p} | {f} | {k} |\n"));
    }
    s.push_str("\n## Failures\n\n");
    for (c, o) in results {
        if let Outcome::Fail(r) = o {
            s.push_str(&format!("- `{}`: {}\n", c.name, truncate(&r.replace('|', "\\|"), 400)));
        }
    }
    s.push_str("\n## Skipped (out of scope)\n\n");
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, o) in results {
        if let Outcome::Skip(r) = o {
            *reasons.entry(r.as_str()).or_default() += 1;
        }
    }
    for (r, n) in reasons {
        s.push_str(&format!("- {r}: {n}\n"));
    }
    s
}
