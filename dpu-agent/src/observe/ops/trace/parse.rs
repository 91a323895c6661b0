//! Reads the text of `ovs-appctl ofproto/trace` (OVS 3.1) into passes and
//! steps, so `trace` can name tables, owners and backends instead of showing
//! OVS's own dump. Pure: text in, data out. A conntrack recirculation starts a
//! new pass; within a pass the steps keep the order OVS printed them in, with
//! resubmits (a group bucket's `resubmit(,45)`) flattened into that order.

/// One `ofproto/trace` run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub passes: Vec<Pass>,
}

/// The packet's way through the bridge until it leaves the pipeline or
/// recirculates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// How OVS resumed it after a recirculation
    /// (`recirc(0x1) - resume conntrack with ct_state=new|trk`); `None` for the
    /// first pass.
    pub resume: Option<String>,
    /// The flow it entered this pass with (`Flow: ...`).
    pub flow: String,
    pub steps: Vec<Step>,
    /// `Datapath actions: ...` of this pass.
    pub datapath_actions: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A flow matched in a table; `actions` are the OpenFlow actions OVS ran
    /// (one per line of the trace, as printed).
    Flow(FlowHit),
    /// Nothing matched in the table (`No match.`).
    Miss { table: u8 },
    /// A `group:N` action; `bucket` is the one OVS chose (`-> using bucket N`).
    Group { id: u32, bucket: Option<u32> },
    /// Something OVS flagged (`>> ...`): a datapath exception, a port that
    /// does not exist.
    Note(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowHit {
    pub table: u8,
    /// The flow's match as OVS prints it (empty for a catch-all).
    pub matches: String,
    pub priority: u16,
    pub cookie: u64,
    pub actions: Vec<String>,
}

/// Text that is not an `ofproto/trace` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParseError {
    #[error("no `Flow:` line in the trace output: {0}")]
    NoFlow(String),
    #[error("cannot read line {line} of the trace: {text:?}")]
    BadLine { line: usize, text: String },
}

impl Trace {
    /// The steps of every pass, in order.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.passes.iter().flat_map(|p| p.steps.iter())
    }

    /// The datapath actions of the last pass: what finally happens to the
    /// packet.
    pub fn final_actions(&self) -> &str {
        self.passes
            .last()
            .map(|p| p.datapath_actions.as_str())
            .unwrap_or("")
    }
}

pub fn parse(text: &str) -> Result<Trace, TraceParseError> {
    let mut trace = Trace::default();
    let mut resume: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(flow) = line.strip_prefix("Flow: ") {
            trace.passes.push(Pass {
                resume: resume.take(),
                flow: flow.to_string(),
                ..Pass::default()
            });
            continue;
        }
        if line.starts_with("recirc(") && line.contains(" - ") {
            resume = Some(line.to_string());
            continue;
        }
        let Some(pass) = trace.passes.last_mut() else {
            continue;
        };
        if let Some(a) = line.strip_prefix("Datapath actions: ") {
            pass.datapath_actions = a.to_string();
        } else if let Some(id) = line.strip_prefix("-> using bucket ") {
            let id = parse_u32(id).ok_or_else(|| bad(n, raw))?;
            if let Some(Step::Group { bucket, .. }) = pass.steps.last_mut() {
                *bucket = Some(id);
            }
        } else if let Some(note) = line.strip_prefix(">> ") {
            pass.steps.push(Step::Note(note.to_string()));
        } else if let Some(step) = table_line(line) {
            pass.steps.push(step.map_err(|()| bad(n, raw))?);
        } else if let Some(Step::Flow(hit)) = pass.steps.last_mut() {
            if is_action(line) {
                if let Some(id) = line.strip_prefix("group:") {
                    let id = parse_u32(id).ok_or_else(|| bad(n, raw))?;
                    hit.actions.push(line.to_string());
                    pass.steps.push(Step::Group { id, bucket: None });
                } else {
                    hit.actions.push(line.to_string());
                }
            }
        }
        // Anything else is OVS's commentary or a bucket's own actions
        // (`set_field:...->reg3` before its resubmit reaches the next table).
    }
    if trace.passes.is_empty() {
        let head: String = text.lines().take(3).collect::<Vec<_>>().join(" / ");
        return Err(TraceParseError::NoFlow(head));
    }
    Ok(trace)
}

fn bad(n: usize, raw: &str) -> TraceParseError {
    TraceParseError::BadLine {
        line: n + 1,
        text: raw.to_string(),
    }
}

/// A line of the pipeline that is an OpenFlow action rather than OVS's
/// commentary (`-> ...`, `thaw`, `Resuming from table N`, `bucket N`,
/// `Final flow:`, `Megaflow:`, headers).
fn is_action(line: &str) -> bool {
    !(line.is_empty()
        || line.starts_with("->")
        || line.starts_with("thaw")
        || line.starts_with("Resuming from table")
        || line.starts_with("bucket ")
        || line.starts_with("Final flow:")
        || line.starts_with("Megaflow:")
        || line.starts_with("bridge(")
        || line.starts_with("---")
        || line.starts_with("==="))
}

/// `N. <match>, priority P, cookie C`, `N. priority P, cookie C` or
/// `N. No match.`; `None` for any other line, `Err` for one that starts like
/// a table line but does not read as one.
fn table_line(line: &str) -> Option<Result<Step, ()>> {
    let (num, rest) = line.split_once(". ")?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((|| {
        let table: u8 = num.parse().map_err(|_| ())?;
        if rest.starts_with("No match") {
            return Ok(Step::Miss { table });
        }
        let (head, cookie) = rest.rsplit_once("cookie ").ok_or(())?;
        let cookie = parse_u64(cookie).ok_or(())?;
        let head = head.trim_end().trim_end_matches(',');
        let (matches, priority) = head.rsplit_once("priority ").ok_or(())?;
        let priority: u16 = priority.trim().parse().map_err(|_| ())?;
        let matches = matches.trim_end().trim_end_matches(',').to_string();
        Ok(Step::Flow(FlowHit {
            table,
            matches,
            priority,
            cookie,
            actions: Vec::new(),
        }))
    })())
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    parse_u64(s).and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
