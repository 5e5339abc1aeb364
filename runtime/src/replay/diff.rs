//! `mynet replay diff A B`: two logs replayed in lockstep, and the first input where their
//! inputs, outputs or states differ.

use super::*;

/// One step of a replay: the start (genesis, or `None` for a snapshot) or one input.
struct Step {
    seq: u64,
    record: Option<LogRecord>,
    outputs: Vec<Output>,
    lines: Vec<String>,
}

/// A replay that advances one input at a time.
struct Stepper<'a> {
    identity: Identity,
    records: Box<dyn Iterator<Item = Result<(u64, LogRecord), StorageError>> + 'a>,
    node: Option<Node>,
    /// The snapshot the replay starts from, until it has been reported as the first step.
    snapshot: Option<u64>,
    describer: Describer,
}

impl<'a> Stepper<'a> {
    fn open(log: &'a dyn EventLog, identity: Identity) -> Result<Stepper<'a>> {
        if log.next_seq() == 0 {
            bail!("the event log is empty");
        }
        let first = log.first_seq();
        let mut node = None;
        if first > 0 {
            let entry = log
                .snapshot(first)?
                .with_context(|| format!("the log starts at record {first} but no snapshot covers what was cut"))?;
            let restored = Node::restore(identity.clone(), &entry.node)
                .map_err(|e| anyhow!("snapshot at record {first} cannot be used: {e}"))?;
            node = Some(restored);
        }
        let records = Box::new(read_records_from(log, first));
        let snapshot = (first > 0).then_some(first);
        Ok(Stepper { identity, records, node, snapshot, describer: Describer::default() })
    }

    /// The next step; checkpoints are skipped (two logs may checkpoint at different points).
    fn next_step(&mut self) -> Result<Option<Step>> {
        if let Some(seq) = self.snapshot.take() {
            return Ok(Some(Step { seq, record: None, outputs: Vec::new(), lines: vec![format!("#{seq} snapshot")] }));
        }
        loop {
            let Some(item) = self.records.next() else { return Ok(None) };
            let (seq, record) = item?;
            let mut outputs = Vec::new();
            match &record {
                LogRecord::Checkpoint { .. } => continue,
                LogRecord::Genesis { node_id, config, rng_seed, time } => {
                    if *node_id != self.identity.node_id() {
                        bail!("the log belongs to node {node_id} but the key file is node {}", self.identity.node_id());
                    }
                    let mut node = Node::new((**config).clone(), self.identity.clone(), *rng_seed, *time);
                    outputs.extend(std::iter::from_fn(|| node.poll_output()));
                    self.node = Some(node);
                }
                LogRecord::Input { time, input } => {
                    let node = self.node.as_mut().with_context(|| format!("record {seq} comes before a genesis"))?;
                    node.handle(*time, input.clone());
                    outputs.extend(std::iter::from_fn(|| node.poll_output()));
                }
            }
            let lines = self.describer.describe(seq, &record, &outputs).lines;
            return Ok(Some(Step { seq, record: Some(record), outputs, lines }));
        }
    }
}

/// What differs at one step.
struct Mismatch {
    inputs: bool,
    outputs: bool,
    state: Option<StateDiff>,
}

/// Where two states differ: the top-level fields, and the first differing path with its values.
struct StateDiff {
    fields: Vec<String>,
    path: String,
    a: String,
    b: String,
}

/// How a diff ended.
enum DiffOutcome {
    /// Both logs ran out together; `inputs` inputs after the start.
    Identical { inputs: u64, last: [u64; 2] },
    /// At `position`, one log (`longer` 0 = A, 1 = B) had a step and the other had ended.
    Ended { position: u64, longer: usize, step: Step },
    /// At `position` the two steps differ.
    Differ { position: u64, steps: Box<[Step; 2]>, mismatch: Mismatch },
}

pub(super) fn diff(a: &Path, b: &Path) -> Result<bool> {
    let (log_a, id_a) = open_data_dir(&DataDir::new(a)).with_context(|| format!("A ({})", a.display()))?;
    // The same directory twice: one open log serves both sides.
    let same = std::fs::canonicalize(a).ok().zip(std::fs::canonicalize(b).ok()).is_some_and(|(x, y)| x == y);
    let opened_b = if same {
        None
    } else {
        Some(open_data_dir(&DataDir::new(b)).with_context(|| format!("B ({})", b.display()))?)
    };
    let (log_b, id_b): (&dyn EventLog, Identity) = match &opened_b {
        Some((log, id)) => (log, id.clone()),
        None => (&log_a, id_a.clone()),
    };
    let mut sides = [
        Stepper::open(&log_a, id_a).with_context(|| format!("A ({})", a.display()))?,
        Stepper::open(log_b, id_b).with_context(|| format!("B ({})", b.display()))?,
    ];
    let outcome = step_until_difference(&mut sides)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let identical = matches!(outcome, DiffOutcome::Identical { .. });
    match report_diff(&mut out, &outcome) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.context("writing to stdout")?,
    }
    Ok(identical)
}

fn step_until_difference(sides: &mut [Stepper<'_>; 2]) -> Result<DiffOutcome> {
    let mut last = [0u64; 2];
    let mut position = 0u64;
    loop {
        let a = sides[0].next_step().context("replaying A")?;
        let b = sides[1].next_step().context("replaying B")?;
        let (a, b) = match (a, b) {
            (None, None) => return Ok(DiffOutcome::Identical { inputs: position.saturating_sub(1), last }),
            (Some(step), None) => return Ok(DiffOutcome::Ended { position, longer: 0, step }),
            (None, Some(step)) => return Ok(DiffOutcome::Ended { position, longer: 1, step }),
            (Some(a), Some(b)) => (a, b),
        };
        last = [a.seq, b.seq];
        let state_differs =
            sides[0].node.as_ref().map(Node::state_hash) != sides[1].node.as_ref().map(Node::state_hash);
        let (inputs, outputs) = (a.record != b.record, a.outputs != b.outputs);
        if inputs || outputs || state_differs {
            let state = match (&sides[0].node, &sides[1].node) {
                (Some(x), Some(y)) if state_differs => Some(state_diff(x, y)),
                _ => None,
            };
            return Ok(DiffOutcome::Differ {
                position,
                steps: Box::new([a, b]),
                mismatch: Mismatch { inputs, outputs, state },
            });
        }
        position += 1;
    }
}

fn report_diff(out: &mut impl Write, outcome: &DiffOutcome) -> io::Result<()> {
    let summary = match outcome {
        DiffOutcome::Identical { inputs, last } => {
            writeln!(
                out,
                "identical: {inputs} inputs; the states and outputs agree after each (A ends at #{}, B at #{})",
                last[0], last[1]
            )?;
            json!({ "identical": true, "inputs": inputs, "a_last_seq": last[0], "b_last_seq": last[1] })
        }
        DiffOutcome::Ended { position, longer, step } => {
            let (long, short) = if *longer == 0 { ("A", "B") } else { ("B", "A") };
            writeln!(out, "{short} ends before {}; {long} continues with:", at_position(*position))?;
            write_lines(out, "  ", &step.lines)?;
            json!({ "identical": false, "position": position, "ended": short, "next_seq": step.seq })
        }
        DiffOutcome::Differ { position, steps, mismatch } => report_mismatch(out, *position, steps, mismatch)?,
    };
    writeln!(out, "{summary}")?;
    out.flush()
}

fn report_mismatch(out: &mut impl Write, position: u64, steps: &[Step; 2], mismatch: &Mismatch) -> io::Result<Value> {
    let mut what = Vec::new();
    if mismatch.inputs {
        what.push("the inputs differ");
    }
    if mismatch.outputs {
        what.push("the outputs differ");
    }
    if mismatch.state.is_some() {
        what.push("the state differs");
    }
    let [a, b] = steps;
    writeln!(out, "first difference at {} (A #{}, B #{}): {}", at_position(position), a.seq, b.seq, what.join(", "))?;
    write_lines(out, "  A ", &a.lines)?;
    write_lines(out, "  B ", &b.lines)?;
    let first_output = mismatch.outputs.then(|| {
        (0..a.outputs.len().max(b.outputs.len())).find(|&i| a.outputs.get(i) != b.outputs.get(i)).unwrap_or(0)
    });
    if let Some(i) = first_output {
        writeln!(
            out,
            "outputs: A {} and B {}; they first differ at output {}",
            a.outputs.len(),
            b.outputs.len(),
            i + 1
        )?;
    }
    if let Some(state) = &mismatch.state {
        writeln!(out, "state: top-level fields that differ: {}", state.fields.join(", "))?;
        writeln!(out, "state: first difference at {}: A {} / B {}", state.path, state.a, state.b)?;
    }
    Ok(json!({
        "identical": false,
        "position": position,
        "a_seq": a.seq,
        "b_seq": b.seq,
        "inputs_differ": mismatch.inputs,
        "outputs_differ": mismatch.outputs,
        "first_differing_output": first_output.map(|i| i + 1),
        "state_differs": mismatch.state.is_some(),
        "state_fields": mismatch.state.as_ref().map(|s| &s.fields),
        "state_path": mismatch.state.as_ref().map(|s| &s.path),
    }))
}

fn at_position(position: u64) -> String {
    if position == 0 { "the start".to_string() } else { format!("input {position}") }
}

fn write_lines(out: &mut impl Write, prefix: &str, lines: &[String]) -> io::Result<()> {
    lines.iter().try_for_each(|line| writeln!(out, "{prefix}{line}"))
}

fn state_diff(a: &Node, b: &Node) -> StateDiff {
    let (a, b) = (readable_state(a), readable_state(b));
    let fields = match (&a, &b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().filter(|k| x.get(*k) != y.get(*k)).cloned().collect()
        }
        _ => Vec::new(),
    };
    let mut path = Vec::new();
    let (va, vb) = first_difference(&a, &b, &mut path).unwrap_or((Some(&a), Some(&b)));
    let path = if path.is_empty() { "(the whole state)".to_string() } else { path.concat() };
    StateDiff { fields, path: path.trim_start_matches('.').to_string(), a: shown(va), b: shown(vb) }
}

/// The first place `a` and `b` differ (`None` for a side where it is absent), in key order;
/// `path` gets its segments (`.key`, `[i]`).
fn first_difference<'v>(
    a: &'v Value,
    b: &'v Value,
    path: &mut Vec<String>,
) -> Option<(Option<&'v Value>, Option<&'v Value>)> {
    if a == b {
        return None;
    }
    let pairs: Vec<(String, Option<&Value>, Option<&Value>)> = match (a, b) {
        // Two different single-key objects are two enum variants: report the variant change here.
        (Value::Object(x), Value::Object(y)) if !(x.len() == 1 && y.len() == 1 && x.keys().ne(y.keys())) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().map(|k| (format!(".{k}"), x.get(k), y.get(k))).collect()
        }
        (Value::Array(x), Value::Array(y)) => {
            (0..x.len().max(y.len())).map(|i| (format!("[{i}]"), x.get(i), y.get(i))).collect()
        }
        _ => return Some((Some(a), Some(b))),
    };
    for (segment, x, y) in pairs {
        path.push(segment);
        match (x, y) {
            (Some(x), Some(y)) => {
                if let Some(found) = first_difference(x, y, path) {
                    return Some(found);
                }
            }
            (x, y) if x != y => return Some((x, y)),
            _ => {}
        }
        path.pop();
    }
    Some((Some(a), Some(b)))
}

/// A JSON value for one line, cut short if long.
fn shown(value: Option<&Value>) -> String {
    let Some(value) = value else { return "(absent)".to_string() };
    let text = value.to_string();
    if text.chars().count() <= VALUE_SHOWN_MAX {
        return text;
    }
    let cut: String = text.chars().take(VALUE_SHOWN_MAX).collect();
    format!("{cut}...")
}
