//! Pipeline files as written: `extends`, `--set` overrides and fan-out, expanded into concrete
//! stages wired to concrete tables. No configuration is interpreted here beyond the keys the
//! core owns (`kind`, `inputs`, `outputs`, `fan_out`, `enabled`).
//!
//! **extends.** `[pipeline] extends = "base.toml"` (relative to the file) starts from another
//! file: its header and stages, with this file's keys merged over them (tables key by key,
//! everything else replaced). `enabled = false` drops an inherited stage.
//!
//! **fan_out.** A stage with `fan_out = { model = ["a", "b"] }` becomes one stage per value
//! (`embed-a`, `embed-b`), each writing its own tables (`embeddings-a`, ...); several keys give
//! every combination, and a list of tables names the combinations one by one
//! (`fan_out = [{ method = "fawkes", mode = "high" }, { method = "lowkey" }]`). A stage that
//! reads a fanned-out table is fanned out along with it (one `detect_scraped` per cloak), and
//! its tables carry the same labels; `inputs = { embeddings = "embeddings[*]" }` instead reads
//! every one of them in one slot (or `"embeddings[model=*]"`, only across that key). A key is
//! one axis wherever it is fanned out: two stages fanned out over `model` pair up by value (the
//! cloaked embeddings of a model read the clean embeddings of the same model), they do not
//! multiply.
//!
//! **tags.** `tags = { defender = "adaptive" }` labels a stage and, through its tables, every
//! stage that reads them, without changing a configuration or a name: what a results table
//! needs to say which chain a figure came from.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::stage::{Kind, PlanError};

type Failed<T> = Result<T, PlanError>;

fn err<T>(message: impl Into<String>) -> Failed<T> {
    Err(PlanError(message.into()))
}

/// The keys of a stage table that the core owns; all others are the kind's configuration.
const CORE_KEYS: &[&str] = &["kind", "inputs", "outputs", "fan_out", "enabled", "tags"];

/// The `[pipeline]` header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_run_root")]
    pub run_root: String,
    /// Consumed while loading; kept so the header parses.
    #[serde(default)]
    pub extends: Option<String>,
}

fn default_run_root() -> String {
    "runs".into()
}

/// One concrete stage after expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecStage {
    pub name: String,
    /// The stage of the file it was expanded from.
    pub template: String,
    /// The fan-out values that made it, as (key, label), in the order of its name, then its
    /// tags (its own and those of the tables it reads).
    pub labels: Vec<(String, String)>,
    pub kind: String,
    /// slot -> the tables it reads (several for a gathering input).
    pub inputs: BTreeMap<String, Vec<String>>,
    /// slot -> table
    pub outputs: BTreeMap<String, String>,
    /// The kind's own keys.
    pub config: toml::Table,
    /// The tables whose labels it inherits: those it reads without gathering them.
    pub inherits: Vec<String>,
}

/// A pipeline ready for typing: its header and concrete stages in file order.
#[derive(Debug, Clone)]
pub struct Spec {
    pub header: Header,
    pub stages: Vec<SpecStage>,
}

/// Reads a pipeline file (with what it extends), applies `key=value` overrides, expands it.
pub fn load(path: &Path, overrides: &[String], kinds: &[Kind]) -> Failed<Spec> {
    let doc = load_doc(path, &mut Vec::new())?;
    finish(doc, overrides, kinds)
}

/// As [`load`], for pipeline text; `extends` is relative to the working folder.
pub fn parse(text: &str, overrides: &[String], kinds: &[Kind]) -> Failed<Spec> {
    let doc = parse_doc(text, Path::new("."), "pipeline text", &mut Vec::new())?;
    finish(doc, overrides, kinds)
}

fn finish(mut doc: toml::Table, overrides: &[String], kinds: &[Kind]) -> Failed<Spec> {
    let late = apply_overrides(&mut doc, overrides)?;
    let header: Header = doc
        .remove("pipeline")
        .ok_or_else(|| PlanError("missing [pipeline] table with a name".into()))?
        .try_into()
        .map_err(|e: toml::de::Error| PlanError(format!("[pipeline]: {}", e.message())))?;
    if header.name.is_empty() || !header.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
        return err(format!("[pipeline] name = {:?}: use letters, digits, - and _ only (it names the run folder)", header.name));
    }
    let stages = match doc.remove("stages") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => return err("stages must be a table of [stages.<name>] tables"),
        None => return err("no stages: add [stages.<name>] tables"),
    };
    if let Some(extra) = doc.keys().next() {
        return err(format!("unknown top-level key {extra:?} (expected [pipeline] and [stages.*])"));
    }
    let mut templates = Vec::new();
    for (name, value) in stages {
        let toml::Value::Table(table) = value else { return err(format!("[stages.{name}] must be a table")) };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return err(format!("[stages.{name}]: a stage name has letters, digits and _ only (- joins fan-out labels)"));
        }
        match table.get("enabled") {
            None | Some(toml::Value::Boolean(true)) => templates.push((name, table)),
            Some(toml::Value::Boolean(false)) => {}
            Some(other) => return err(format!("stage {name}: enabled = {other}: must be true or false")),
        }
    }
    if templates.is_empty() {
        return err("the pipeline has no stage to run");
    }
    let mut stages = expand(templates, kinds)?;
    apply_late_overrides(&mut stages, late)?;
    Ok(Spec { header, stages })
}

fn load_doc(path: &Path, seen: &mut Vec<PathBuf>) -> Failed<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|e| PlanError(format!("{}: cannot read pipeline: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse_doc(&text, dir, &path.display().to_string(), seen)
}

/// Parses one file and merges it over the file it extends.
fn parse_doc(text: &str, dir: &Path, what: &str, seen: &mut Vec<PathBuf>) -> Failed<toml::Table> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| PlanError(syntax_error(what, text, &e)))?;
    let extends = doc.get_mut("pipeline").and_then(|h| h.as_table_mut()).and_then(|h| h.remove("extends"));
    let Some(base) = extends else { return Ok(doc) };
    let Some(base) = base.as_str() else { return err(format!("{what}: [pipeline] extends must name a file")) };
    let base_path = dir.join(base);
    let canonical = base_path.canonicalize().map_err(|e| PlanError(format!("{what}: extends = {base:?}: {}: {e}", base_path.display())))?;
    if seen.contains(&canonical) || seen.len() > 16 {
        return err(format!("{what}: extends = {base:?}: the files extend each other in a loop"));
    }
    seen.push(canonical);
    let mut merged = load_doc(&base_path, seen)?;
    merge(&mut merged, doc);
    Ok(merged)
}

/// Merges `over` into `base`: tables key by key, any other value replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A TOML syntax error as one line: `file:line:column: message`.
fn syntax_error(what: &str, text: &str, e: &toml::de::Error) -> String {
    let position = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(":{line}:{column}")
    });
    format!("{what}{}: not a valid pipeline file: {}", position.unwrap_or_default(), e.message().trim().replace('\n', " "))
}

/// An override for a stage that exists only after fan-out (`embed-dlib_resnet29_150.batch_size`).
struct LateOverride {
    item: String,
    key: String,
    value: toml::Value,
}

/// Applies `key=value` overrides to the file's stages and header; returns those that name
/// expanded stages. A key is a dotted path: `ingest.dataset` (a stage, then its key),
/// `run_root` (a header key), or the full `stages.ingest.dataset` / `pipeline.run_root`.
/// The value is read as TOML when it parses as such (`7`, `true`, `["a","b"]`), else as text.
fn apply_overrides(doc: &mut toml::Table, items: &[String]) -> Failed<Vec<LateOverride>> {
    let mut late = Vec::new();
    for item in items {
        let Some((key, raw)) = item.split_once('=') else { return err(format!("--set {item}: expected key=value")) };
        let key = key.trim();
        let value = parse_value(raw.trim());
        let mut path: Vec<String> = key.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return err(format!("--set {item}: empty part in the key {key:?}"));
        }
        let stages = doc.get("stages").and_then(|s| s.as_table());
        let is_stage = stages.is_some_and(|s| s.contains_key(&path[0]));
        match path[0].as_str() {
            "stages" | "pipeline" if path.len() >= 2 => {}
            _ if is_stage && path.len() >= 2 => path.insert(0, "stages".into()),
            _ if is_stage => return err(format!("--set {item}: name a key of stage {key}, as in {key}.some_key=value")),
            _ if path.len() == 1 => path.insert(0, "pipeline".into()),
            _ => {
                late.push(LateOverride { item: item.clone(), key: key.to_owned(), value });
                continue;
            }
        }
        set(doc, &path, value).map_err(|e| PlanError(format!("--set {item}: {e}")))?;
    }
    Ok(late)
}

fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("a key has at least one part");
    let mut table = table;
    for part in parents {
        table = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Overrides of expanded stages: the longest stage name that prefixes the key wins.
fn apply_late_overrides(stages: &mut [SpecStage], late: Vec<LateOverride>) -> Failed<()> {
    for o in late {
        let target =
            stages.iter_mut().filter(|s| o.key.strip_prefix(&s.name).is_some_and(|rest| rest.starts_with('.') && rest.len() > 1)).max_by_key(|s| s.name.len());
        let Some(stage) = target else {
            let first = o.key.split('.').next().unwrap_or_default();
            return err(format!("--set {}: no stage named {first:?}", o.item));
        };
        let path: Vec<String> = o.key[stage.name.len() + 1..].split('.').map(str::to_owned).collect();
        if CORE_KEYS.contains(&path[0].as_str()) {
            return err(format!("--set {}: {} of an expanded stage is set by its template", o.item, path[0]));
        }
        set(&mut stage.config, &path, o.value).map_err(|e| PlanError(format!("--set {}: {e}", o.item)))?;
    }
    Ok(())
}

/// A reference to a table in an `inputs` slot: the table and which of its fan-out keys the
/// slot reads all at once.
#[derive(Debug, Clone)]
struct TableRef {
    table: String,
    gather: Gather,
}

#[derive(Debug, Clone, PartialEq)]
enum Gather {
    None,
    All,
    Keys(Vec<String>),
}

fn parse_ref(text: &str) -> Result<TableRef, String> {
    let (table, gather) = match text.split_once('[') {
        None => (text, Gather::None),
        Some((table, rest)) => {
            let inner = rest.strip_suffix(']').ok_or_else(|| format!("{text:?}: expected table[*] or table[key=*]"))?;
            if inner.trim() == "*" {
                (table, Gather::All)
            } else {
                let keys = inner
                    .split(',')
                    .map(|k| k.trim().strip_suffix("=*").map(str::trim).map(str::to_owned).ok_or_else(|| format!("{text:?}: expected table[key=*]")))
                    .collect::<Result<Vec<_>, _>>()?;
                (table, Gather::Keys(keys))
            }
        }
    };
    if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{text:?}: a table name has letters, digits and _ only"));
    }
    Ok(TableRef { table: table.to_owned(), gather })
}

/// The fan-out cells of one table: its axes (`stage.key` ids, in naming order) and, per cell,
/// the label of each axis.
#[derive(Debug, Clone, Default)]
struct Cells {
    axes: Vec<String>,
    cells: Vec<Cell>,
    /// Tags of the stage that wrote the table: (key, value), the same for every cell.
    tags: Vec<(String, String)>,
}

type Cell = BTreeMap<String, String>;

fn concrete(table: &str, axes: &[String], cell: &Cell) -> String {
    let labels: Vec<&str> = axes.iter().map(|a| cell[a].as_str()).collect();
    if labels.is_empty() { table.to_owned() } else { format!("{table}-{}", labels.join("-")) }
}

/// Every pair of cells that agree on their common axes, merged.
fn join(left: Vec<Cell>, right: &[Cell]) -> Vec<Cell> {
    let mut out = Vec::new();
    for l in &left {
        for r in right {
            if r.iter().all(|(axis, label)| l.get(axis).is_none_or(|other| other == label)) {
                let mut merged = l.clone();
                merged.extend(r.iter().map(|(a, v)| (a.clone(), v.clone())));
                out.push(merged);
            }
        }
    }
    out
}

/// The cells of a stage's own `fan_out`: each with its config values and labels.
/// A stage's own fan-out axes, and its cells with the configuration values each sets.
type OwnCells = (Vec<String>, Vec<(Cell, toml::Table)>);

fn own_cells(stage: &str, fan_out: Option<&toml::Value>) -> Failed<OwnCells> {
    let Some(fan_out) = fan_out else { return Ok((vec![], vec![(Cell::new(), toml::Table::new())])) };
    let entries: Vec<toml::Table> = match fan_out {
        toml::Value::Table(lists) => {
            let mut combos = vec![toml::Table::new()];
            for (key, values) in lists {
                let Some(values) = values.as_array().filter(|v| !v.is_empty()) else {
                    return err(format!("stage {stage}: fan_out.{key} must be a non-empty list of values"));
                };
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        values.iter().map(move |v| {
                            let mut c = c.clone();
                            c.insert(key.clone(), v.clone());
                            c
                        })
                    })
                    .collect();
            }
            combos
        }
        toml::Value::Array(list) if !list.is_empty() => list
            .iter()
            .map(|v| v.as_table().cloned().ok_or_else(|| PlanError(format!("stage {stage}: fan_out as a list holds tables of keys and values"))))
            .collect::<Failed<_>>()?,
        _ => return err(format!("stage {stage}: fan_out must be a table of lists or a non-empty list of tables")),
    };
    let mut axes: Vec<String> = Vec::new();
    let mut cells = Vec::new();
    for entry in entries {
        let mut cell = Cell::new();
        for (key, value) in &entry {
            if CORE_KEYS.contains(&key.as_str()) {
                return err(format!("stage {stage}: fan_out cannot vary {key}"));
            }
            let axis = key.clone();
            if !axes.contains(&axis) {
                axes.push(axis.clone());
            }
            cell.insert(
                axis,
                label(value)
                    .ok_or_else(|| PlanError(format!("stage {stage}: fan_out.{key}: values must be text, numbers, booleans, or lists or tables of them")))?,
            );
        }
        cells.push((cell, entry));
    }
    // A list entry that lacks a key still names the axis (with the kind's default).
    for (cell, _) in &mut cells {
        for axis in &axes {
            cell.entry(axis.clone()).or_insert_with(|| "default".into());
        }
    }
    Ok((axes, cells))
}

/// A value as it appears in stage and table names.
fn label(value: &toml::Value) -> Option<String> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => items.iter().map(label).collect::<Option<Vec<_>>>()?.join("+"),
        // An inline table (`{ window = 10, tolerance = 0.01 }`): its keys and values, in key order.
        toml::Value::Table(t) => t.iter().map(|(k, v)| Some(format!("{k}={}", label(v)?))).collect::<Option<Vec<_>>>()?.join("+"),
        _ => return None,
    };
    Some(text.chars().map(|c| if c.is_ascii_alphanumeric() || "_.+=".contains(c) { c } else { '_' }).collect())
}

/// Expands every stage of the file into its concrete stages.
fn expand(templates: Vec<(String, toml::Table)>, kinds: &[Kind]) -> Failed<Vec<SpecStage>> {
    struct Template {
        name: String,
        kind: &'static str,
        inputs: BTreeMap<String, Vec<TableRef>>,
        outputs: BTreeMap<String, String>,
        tags: Vec<(String, String)>,
        table: toml::Table,
    }
    let kind_names = || kinds.iter().map(|k| k.name).collect::<Vec<_>>().join(", ");
    let mut parsed = Vec::new();
    for (name, mut table) in templates {
        let kind_name = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            _ => return err(format!("stage {name}: needs kind = one of {}", kind_names())),
        };
        let kind = kinds
            .iter()
            .find(|k| k.name == kind_name)
            .ok_or_else(|| PlanError(format!("stage {name}: unknown kind {kind_name:?}; kinds are {}", kind_names())))?;
        let inputs = wiring(&name, kind, table.remove("inputs"), true)?
            .into_iter()
            .map(|(slot, refs)| {
                Ok((slot, refs.iter().map(|r| parse_ref(r)).collect::<Result<Vec<_>, _>>().map_err(|e| PlanError(format!("stage {name}: inputs.{e}")))?))
            })
            .collect::<Failed<BTreeMap<_, _>>>()?;
        let outputs = wiring(&name, kind, table.remove("outputs"), false)?
            .into_iter()
            .map(|(slot, mut tables)| match tables.len() {
                1 => {
                    let t = tables.remove(0);
                    match parse_ref(&t) {
                        Ok(r) if r.gather == Gather::None => Ok((slot, t)),
                        _ => err(format!("stage {name}: outputs.{slot} = {t:?}: a table name has letters, digits and _ only")),
                    }
                }
                _ => err(format!("stage {name}: outputs.{slot} must name exactly one table")),
            })
            .collect::<Failed<BTreeMap<_, _>>>()?;
        table.remove("enabled");
        let tags = parse_tags(&name, table.remove("tags"))?;
        parsed.push(Template { name, kind: kind.name, inputs, outputs, tags, table });
    }

    // Templates in an order where every table is produced before it is read.
    let mut producer: HashMap<&str, &str> = HashMap::new();
    for t in &parsed {
        for table in t.outputs.values() {
            if let Some(other) = producer.insert(table, &t.name) {
                return err(format!("table {table:?} is written by both stage {other} and stage {}", t.name));
            }
        }
    }
    for t in &parsed {
        for r in t.inputs.values().flatten() {
            if !producer.contains_key(r.table.as_str()) {
                let mut tables: Vec<&str> = producer.keys().copied().collect();
                tables.sort();
                return err(format!("stage {} reads table {:?}, which no stage writes (tables: {})", t.name, r.table, tables.join(", ")));
            }
        }
    }
    let mut order: Vec<usize> = Vec::new();
    let mut made: HashSet<&str> = HashSet::new();
    while order.len() < parsed.len() {
        let ready = (0..parsed.len()).find(|i| !order.contains(i) && parsed[*i].inputs.values().flatten().all(|r| made.contains(r.table.as_str())));
        let Some(i) = ready else {
            let waiting: Vec<&str> = (0..parsed.len()).filter(|i| !order.contains(i)).map(|i| parsed[i].name.as_str()).collect();
            return err(format!("stages {waiting:?} wait on each other's tables (a cycle)"));
        };
        made.extend(parsed[i].outputs.values().map(String::as_str));
        order.push(i);
    }

    let mut table_cells: HashMap<String, Cells> = HashMap::new();
    let mut expanded: Vec<(usize, SpecStage)> = Vec::new();
    for &i in &order {
        let t = &parsed[i];
        let (own_axes, own) = own_cells(&t.name, t.table.get("fan_out"))?;
        // Each input contributes the cells of its table, less the axes it gathers.
        let mut axes: Vec<String> = Vec::new();
        let mut cells = vec![Cell::new()];
        let mut propagated: HashMap<(String, usize), Vec<String>> = HashMap::new();
        let mut tags: Vec<(String, String)> = Vec::new();
        for (slot, refs) in &t.inputs {
            for (n, r) in refs.iter().enumerate() {
                let source = &table_cells[&r.table];
                if r.gather == Gather::None {
                    // A tag the stage sets itself settles what its inputs disagree on.
                    let inherited: Vec<(String, String)> = source.tags.iter().filter(|(k, _)| !t.tags.iter().any(|(own, _)| own == k)).cloned().collect();
                    inherit_tags(&t.name, &mut tags, &inherited)?;
                }
                let gathered: Vec<String> = match &r.gather {
                    Gather::None => vec![],
                    Gather::All if source.axes.is_empty() => {
                        return err(format!("stage {}: inputs.{slot}: table {} is not fanned out, so [*] gathers nothing", t.name, r.table));
                    }
                    Gather::All => source.axes.clone(),
                    Gather::Keys(keys) => keys
                        .iter()
                        .map(|k| {
                            source.axes.iter().find(|a| *a == k).cloned().ok_or_else(|| {
                                PlanError(format!(
                                    "stage {}: inputs.{slot}: table {} is not fanned out over {k:?} (its keys: {:?})",
                                    t.name, r.table, source.axes
                                ))
                            })
                        })
                        .collect::<Failed<_>>()?,
                };
                let keep: Vec<String> = source.axes.iter().filter(|a| !gathered.contains(a)).cloned().collect();
                let mut projected: Vec<Cell> = Vec::new();
                for c in &source.cells {
                    let p: Cell = c.iter().filter(|(a, _)| keep.contains(a)).map(|(a, v)| (a.clone(), v.clone())).collect();
                    if !projected.contains(&p) {
                        projected.push(p);
                    }
                }
                cells = join(cells, &projected);
                for a in &keep {
                    if !axes.contains(a) {
                        axes.push(a.clone());
                    }
                }
                propagated.insert((slot.clone(), n), keep);
            }
        }
        let mut combined: Vec<(Cell, toml::Table)> = Vec::new();
        for c in &cells {
            for (own_cell, values) in &own {
                combined.extend(join(vec![c.clone()], std::slice::from_ref(own_cell)).into_iter().map(|m| (m, values.clone())));
            }
        }
        for a in own_axes {
            if !axes.contains(&a) {
                axes.push(a);
            }
        }
        for (key, value) in &t.tags {
            tags.retain(|(k, _)| k != key);
            tags.push((key.clone(), value.clone()));
        }
        let mut names = HashSet::new();
        for (cell, values) in &combined {
            let name = concrete(&t.name, &axes, cell);
            if !names.insert(name.clone()) {
                return err(format!("stage {}: two fan-out cells are both named {name} (their labels collide)", t.name));
            }
            let mut inputs = BTreeMap::new();
            let mut inherits = Vec::new();
            for (slot, refs) in &t.inputs {
                let mut tables = Vec::new();
                for (n, r) in refs.iter().enumerate() {
                    let source = &table_cells[&r.table];
                    let keep = &propagated[&(slot.clone(), n)];
                    for c in &source.cells {
                        if keep.iter().all(|a| c.get(a) == cell.get(a)) {
                            let table = concrete(&r.table, &source.axes, c);
                            if r.gather == Gather::None {
                                inherits.push(table.clone());
                            }
                            tables.push(table);
                        }
                    }
                }
                inputs.insert(slot.clone(), tables);
            }
            let outputs = t.outputs.iter().map(|(slot, table)| (slot.clone(), concrete(table, &axes, cell))).collect();
            let mut config = t.table.clone();
            config.remove("fan_out");
            config.extend(values.clone());
            let mut labels: Vec<(String, String)> = axes.iter().map(|a| (a.clone(), cell[a].clone())).collect();
            labels.extend(tags.iter().cloned());
            expanded.push((i, SpecStage { name, template: t.name.clone(), labels, kind: t.kind.to_owned(), inputs, outputs, config, inherits }));
        }
        for table in t.outputs.values() {
            table_cells.insert(table.clone(), Cells { axes: axes.clone(), cells: combined.iter().map(|(c, _)| c.clone()).collect(), tags: tags.clone() });
        }
    }
    // File order, each template's cells together.
    expanded.sort_by_key(|(i, _)| *i);
    Ok(expanded.into_iter().map(|(_, s)| s).collect())
}

/// A stage's `tags = { key = "value" }`: labels that do not change its configuration or its
/// name, carried by its tables to every stage that reads them (a trainer chain's `defender`).
fn parse_tags(stage: &str, value: Option<toml::Value>) -> Failed<Vec<(String, String)>> {
    let Some(value) = value else { return Ok(vec![]) };
    let toml::Value::Table(table) = value else { return err(format!("stage {stage}: tags must be a table of key = value")) };
    table
        .into_iter()
        .map(|(k, v)| label(&v).map(|l| (k.clone(), l)).ok_or_else(|| PlanError(format!("stage {stage}: tags.{k}: a tag is text, a number or a boolean"))))
        .collect()
}

/// Adds the tags of a table a stage reads; two tables that disagree on a tag are an error
/// (unless the stage sets that tag itself).
fn inherit_tags(stage: &str, tags: &mut Vec<(String, String)>, from: &[(String, String)]) -> Failed<()> {
    for (key, value) in from {
        match tags.iter().find(|(k, _)| k == key) {
            Some((_, v)) if v != value => return err(format!("stage {stage} reads tables tagged {key} = {v} and {key} = {value}; gather one of them")),
            Some(_) => {}
            None => tags.push((key.clone(), value.clone())),
        }
    }
    Ok(())
}

/// Maps each slot of a kind to table references: the slot's own name unless the file says
/// otherwise. Optional input slots are wired only when the file names them.
fn wiring(stage: &str, kind: &Kind, value: Option<toml::Value>, inputs: bool) -> Failed<BTreeMap<String, Vec<String>>> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tables {
        One(String),
        Many(Vec<String>),
    }
    let what = if inputs { "inputs" } else { "outputs" };
    let given: BTreeMap<String, Tables> = match value {
        None => BTreeMap::new(),
        Some(v) => v.try_into().map_err(|_| PlanError(format!("stage {stage}: {what} must map slot names to table names")))?,
    };
    let slots: Vec<&str> = if inputs { kind.inputs.iter().map(|s| s.name).collect() } else { kind.outputs.iter().map(|s| s.name).collect() };
    let optional: Vec<&str> = if inputs { kind.optional_inputs.iter().map(|s| s.name).collect() } else { vec![] };
    if let Some(unknown) = given.keys().find(|k| !slots.contains(&k.as_str()) && !optional.contains(&k.as_str())) {
        return err(format!("stage {stage}: {what}.{unknown}: kind {} has no such slot (slots: {slots:?}, optional: {optional:?})", kind.name));
    }
    let mut wired: BTreeMap<String, Vec<String>> = given
        .into_iter()
        .map(|(slot, t)| {
            (
                slot,
                match t {
                    Tables::One(t) => vec![t],
                    Tables::Many(ts) => ts,
                },
            )
        })
        .collect();
    if let Some((slot, _)) = wired.iter().find(|(_, t)| t.is_empty()) {
        return err(format!("stage {stage}: {what}.{slot} names no table"));
    }
    for slot in slots {
        wired.entry(slot.to_owned()).or_insert_with(|| vec![slot.to_owned()]);
    }
    Ok(wired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::stage::{Scope, Slot};

    fn never(_: toml::Table) -> Result<std::sync::Arc<dyn crate::pipeline::stage::Stage>, String> {
        Err("not for planning".into())
    }

    const ANY: &[&str] = &["t"];
    const KINDS: &[Kind] = &[
        Kind {
            name: "source",
            source: file!(),
            summary: "",
            inputs: &[],
            optional_inputs: &[],
            outputs: &[Slot::new("images", ANY)],
            labels: &[],
            scope: Scope::Picture,
            plan: never,
        },
        Kind {
            name: "map",
            source: file!(),
            summary: "",
            inputs: &[Slot::new("images", ANY)],
            optional_inputs: &[],
            outputs: &[Slot::new("embeddings", ANY)],
            labels: &[],
            scope: Scope::Picture,
            plan: never,
        },
        Kind {
            name: "reduce",
            source: file!(),
            summary: "",
            inputs: &[Slot::new("embeddings", ANY)],
            optional_inputs: &[],
            outputs: &[Slot::new("metrics", ANY)],
            labels: &[],
            scope: Scope::Picture,
            plan: never,
        },
    ];

    fn names(spec: &Spec) -> Vec<&str> {
        spec.stages.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn fan_out_values_label_their_cells() {
        let value = |text: &str| text.parse::<toml::Table>().unwrap().remove("v").unwrap();
        assert_eq!(label(&value("v = 'high'")).as_deref(), Some("high"));
        assert_eq!(label(&value("v = ['a/b', 'c']")).as_deref(), Some("a_b+c"));
        // An inline table: its keys and values in the order written (a cell of `early_stop`).
        assert_eq!(label(&value("v = { window = 5, tolerance = 0.02 }")).as_deref(), Some("window=5+tolerance=0.02"));
        assert_eq!(label(&value("v = 1979-05-27")), None, "dates label no cell");
    }

    #[test]
    fn a_fan_out_propagates_to_readers_and_a_gather_collects_it() {
        let text = "[pipeline]\nname = 't'\n[stages.src]\nkind = 'source'\n\
            [stages.cloak]\nkind = 'map'\noutputs = { embeddings = 'cloaked' }\nfan_out = [{ method = 'fawkes', mode = 'high' }, { method = 'lowkey' }]\n\
            [stages.embed]\nkind = 'map'\ninputs = { images = 'cloaked' }\nfan_out = { model = ['a', 'b'] }\n\
            [stages.per_cloak]\nkind = 'reduce'\ninputs = { embeddings = 'embeddings[model=*]' }\n\
            [stages.all]\nkind = 'reduce'\ninputs = { embeddings = 'embeddings[*]' }\noutputs = { metrics = 'summary' }\n";
        let spec = parse(text, &[], KINDS).unwrap();
        assert_eq!(
            names(&spec),
            [
                "src",
                "cloak-fawkes-high",
                "cloak-lowkey-default",
                "embed-fawkes-high-a",
                "embed-fawkes-high-b",
                "embed-lowkey-default-a",
                "embed-lowkey-default-b",
                "per_cloak-fawkes-high",
                "per_cloak-lowkey-default",
                "all"
            ]
        );
        let stage = |n: &str| spec.stages.iter().find(|s| s.name == n).unwrap();
        assert_eq!(stage("cloak-lowkey-default").config.get("method").and_then(|v| v.as_str()), Some("lowkey"));
        assert!(stage("cloak-lowkey-default").config.get("mode").is_none(), "a missing key keeps the kind's default");
        assert_eq!(stage("embed-lowkey-default-b").inputs["images"], ["cloaked-lowkey-default"]);
        assert_eq!(stage("embed-lowkey-default-b").outputs["embeddings"], "embeddings-lowkey-default-b");
        assert_eq!(
            stage("embed-lowkey-default-b").labels,
            [("method".into(), "lowkey".into()), ("mode".into(), "default".into()), ("model".into(), "b".into())]
        );
        assert_eq!(stage("per_cloak-fawkes-high").inputs["embeddings"], ["embeddings-fawkes-high-a", "embeddings-fawkes-high-b"]);
        assert_eq!(stage("all").inputs["embeddings"].len(), 4);
    }

    #[test]
    fn one_key_fanned_out_in_two_stages_is_one_axis() {
        let text = "[pipeline]\nname = 't'\n[stages.src]\nkind = 'source'\n\
            [stages.clean]\nkind = 'map'\noutputs = { embeddings = 'clean' }\nfan_out = { model = ['a', 'b'] }\n\
            [stages.again]\nkind = 'reduce'\ninputs = { embeddings = 'clean' }\nfan_out = { model = ['a', 'b'] }\n";
        let spec = parse(text, &[], KINDS).unwrap();
        assert_eq!(names(&spec), ["src", "clean-a", "clean-b", "again-a", "again-b"]);
        assert_eq!(spec.stages[4].inputs["embeddings"], ["clean-b"]);
    }

    #[test]
    fn tags_travel_with_tables_but_not_into_names() {
        let text = "[pipeline]\nname = 't'\n[stages.src]\nkind = 'source'\ntags = { dataset = 'fixture' }\n\
            [stages.embed]\nkind = 'map'\ntags = { defender = 'oblivious' }\nfan_out = { model = ['a'] }\n\
            [stages.all]\nkind = 'reduce'\ninputs = { embeddings = 'embeddings[*]' }\n";
        let spec = parse(text, &[], KINDS).unwrap();
        assert_eq!(names(&spec), ["src", "embed-a", "all"]);
        let labels = |n: &str| spec.stages.iter().find(|s| s.name == n).unwrap().labels.clone();
        assert_eq!(labels("embed-a"), [("model".into(), "a".into()), ("dataset".into(), "fixture".into()), ("defender".into(), "oblivious".into())]);
        assert!(labels("all").is_empty(), "a gather does not inherit the gathered tables' tags");
        assert!(spec.stages[1].config.get("tags").is_none());
    }

    #[test]
    fn inputs_that_disagree_on_a_tag_need_the_stage_to_settle_it() {
        let base = "[pipeline]\nname = 't'\n[stages.a]\nkind = 'source'\ntags = { protocol = 'x' }\n\
            [stages.b]\nkind = 'source'\noutputs = { images = 'other' }\ntags = { protocol = 'y' }\n\
            [stages.both]\nkind = 'map'\ninputs = { images = ['images', 'other'] }\n";
        let e = parse(base, &[], KINDS).unwrap_err();
        assert!(e.0.contains("stage both reads tables tagged protocol = x and protocol = y"), "{e}");
        let spec = parse(&format!("{base}tags = {{ protocol = 'z' }}\n"), &[], KINDS).unwrap();
        assert_eq!(spec.stages[2].labels, [("protocol".into(), "z".into())]);
    }

    #[test]
    fn overrides_reach_templates_expanded_stages_and_the_header() {
        let text = "[pipeline]\nname = 't'\n[stages.src]\nkind = 'source'\ndataset = 'x'\n[stages.embed]\nkind = 'map'\nfan_out = { model = ['a', 'b'] }\n";
        let spec = parse(text, &["src.dataset=/data".into(), "run_root=s3://b/r".into(), "embed.batch=4".into(), "embed-b.batch=8".into()], KINDS).unwrap();
        assert_eq!(spec.header.run_root, "s3://b/r");
        assert_eq!(spec.stages[0].config["dataset"].as_str(), Some("/data"));
        assert_eq!(spec.stages[1].config["batch"].as_integer(), Some(4));
        assert_eq!(spec.stages[2].config["batch"].as_integer(), Some(8));
        let e = parse(text, &["nothing.x=1".into()], KINDS).unwrap_err();
        assert!(e.0.contains("no stage named \"nothing\""), "{e}");
        let e = parse(text, &["embed.fan_out.model=[]".into()], KINDS).unwrap_err();
        assert!(e.0.contains("non-empty list"), "{e}");
    }

    #[test]
    fn wiring_mistakes_are_named() {
        let e = parse("[pipeline]\nname = 't'\n[stages.r]\nkind = 'reduce'\n", &[], KINDS).unwrap_err();
        assert!(e.0.contains("reads table \"embeddings\", which no stage writes"), "{e}");
        let e =
            parse("[pipeline]\nname = 't'\n[stages.a]\nkind = 'map'\noutputs = { embeddings = 'images' }\n[stages.b]\nkind = 'map'\n", &[], KINDS).unwrap_err();
        assert!(e.0.contains("a cycle"), "{e}");
        let e = parse("[pipeline]\nname = 't'\n[stages.a]\nkind = 'nope'\n", &[], KINDS).unwrap_err();
        assert!(e.0.contains("unknown kind \"nope\"") && e.0.contains("source, map, reduce"), "{e}");
        let e =
            parse("[pipeline]\nname = 't'\n[stages.s]\nkind = 'source'\n[stages.a]\nkind = 'map'\ninputs = { pictures = 'images' }\n", &[], KINDS).unwrap_err();
        assert!(e.0.contains("inputs.pictures: kind map has no such slot"), "{e}");
        let e = parse("[pipeline]\nname = 't'\n[stages.s]\nkind = 'source'\n[stages.a]\nkind = 'map'\ninputs = { images = 'images[*]' }\n", &[], KINDS)
            .unwrap_err();
        assert!(e.0.contains("not fanned out"), "{e}");
        let e = parse("[pipeline]\nname = 't'\n[stages.s]\nkind = 'source'\nfan_out = { v = ['a b', 'a_b'] }\n", &[], KINDS).unwrap_err();
        assert!(e.0.contains("collide"), "{e}");
        let e = parse("[pipeline]\nname = 't'\n[stages.s]\nkind = 'source'\nx = [1\n", &[], KINDS).unwrap_err();
        assert!(e.0.starts_with("pipeline text:5:7:") && !e.0.contains('\n'), "{e}");
    }

    #[test]
    fn a_file_extends_another_and_can_drop_its_stages() {
        let dir = std::env::temp_dir().join(format!("cloakbench-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("base.toml"),
            "[pipeline]\nname = 'base'\n[stages.src]\nkind = 'source'\ndataset = 'x'\nlimits = { a = 1, b = 2 }\n[stages.embed]\nkind = 'map'\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("child.toml"),
            "[pipeline]\nname = 'child'\nextends = 'base.toml'\n[stages.src]\nlimits = { b = 3 }\n[stages.embed]\nenabled = false\n",
        )
        .unwrap();
        let spec = load(&dir.join("child.toml"), &[], KINDS).unwrap();
        assert_eq!(spec.header.name, "child");
        assert_eq!(names(&spec), ["src"]);
        let limits = spec.stages[0].config["limits"].as_table().unwrap();
        assert_eq!((limits["a"].as_integer(), limits["b"].as_integer(), spec.stages[0].config["dataset"].as_str()), (Some(1), Some(3), Some("x")));
        std::fs::write(dir.join("loop.toml"), "[pipeline]\nname = 'l'\nextends = 'loop.toml'\n").unwrap();
        assert!(load(&dir.join("loop.toml"), &[], KINDS).unwrap_err().0.contains("loop"));
        std::fs::remove_dir_all(dir).ok();
    }
}
