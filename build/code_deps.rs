//! Which files of the crate each source file's behaviour can depend on, and a digest of them.
//!
//! A stage's fingerprint includes the digest of its own source file's dependencies, not of the
//! whole crate, so that editing the report, the CLI or another stage does not throw away hours of
//! cloaks computed by code that did not change. The rule errs towards including too much; a
//! file left out would let a rebuilt binary reuse a stale table. A file depends on:
//! - every module that a `crate::`, `super::` or `self::` path in its code names (in `use` lines
//!   or inline, tests included, brace groups expanded at any depth; comments and string
//!   literals name nothing): the longest prefix of the path that is a module file;
//! - every child module of a module it depends on (a module may use its children by their bare
//!   names), except the crate root's (lib.rs declares every module and holds no logic);
//! - the files it brings in with `include_str!`, `include_bytes!` or `include!`;
//! - and, whatever it names, the files every stage runs through or under: the pipeline core
//!   (`src/pipeline/`), `lib.rs`, `main.rs`, `runtime.rs` (threads, allocator, MKL's
//!   reproducibility mode), `Cargo.toml`, `Cargo.lock` and the build script with this file;
//!   and every file with an `impl` for a type it does not define (Rust lets any file of the
//!   crate implement a trait for any of its types: code that uses the impl need not name it).
//!
//! Then the same for each of those, to the end. The build script writes the digests; the tests
//! include this file too (tests/it/code_deps.rs).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from the crate root: `["stages", "cloak"]` for src/stages/cloak.rs.
type ModulePath = Vec<String>;

/// The crate's source files by module, read once.
pub struct Crate {
    root: PathBuf,
    modules: BTreeMap<ModulePath, PathBuf>,
    texts: BTreeMap<PathBuf, String>,
    /// Files that implement something for a type defined elsewhere (or for any `T`).
    extenders: Vec<PathBuf>,
}

/// Files every stage's digest covers, relative to the crate root.
const ALWAYS: &[&str] = &["Cargo.toml", "Cargo.lock", "build.rs", "build/code_deps.rs", "src/lib.rs", "src/main.rs", "src/runtime.rs"];
/// Folders every stage's digest covers whole.
const ALWAYS_FOLDERS: &[&str] = &["src/pipeline"];

impl Crate {
    /// Reads every `.rs` file under `root/src`.
    pub fn read(root: &Path) -> std::io::Result<Crate> {
        let mut files = Vec::new();
        collect(&root.join("src"), &mut files)?;
        let mut modules = BTreeMap::new();
        let mut texts = BTreeMap::new();
        for file in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
            let relative = file.strip_prefix(root).expect("under the root").to_path_buf();
            let module = module_of(&relative);
            // main.rs is the binary's root, not the library's: it names the library by its name.
            if relative != Path::new("src/main.rs") {
                modules.insert(module, relative.clone());
            }
            texts.insert(relative, std::fs::read_to_string(&file)?);
        }
        let extenders = texts.iter().filter(|(_, text)| implements_for_foreign_types(text)).map(|(f, _)| f.clone()).collect();
        Ok(Crate { root: root.to_path_buf(), modules, texts, extenders })
    }

    /// Every source file of src/, relative to the root, in order.
    pub fn sources(&self) -> impl Iterator<Item = &PathBuf> {
        self.texts.keys()
    }

    /// The files `file` (relative to the root) depends on, itself included.
    pub fn dependencies(&self, file: &Path) -> BTreeSet<PathBuf> {
        let mut seen: BTreeSet<PathBuf> = ALWAYS.iter().map(PathBuf::from).collect();
        seen.extend(self.texts.keys().filter(|f| ALWAYS_FOLDERS.iter().any(|d| f.starts_with(d))).cloned());
        seen.extend(self.extenders.iter().cloned());
        seen.insert(file.to_path_buf());
        let mut to_visit: Vec<PathBuf> = seen.iter().cloned().collect();
        while let Some(next) = to_visit.pop() {
            for dependency in self.direct_dependencies(&next) {
                if seen.insert(dependency.clone()) {
                    to_visit.push(dependency);
                }
            }
        }
        seen
    }

    /// SHA-256 over the dependencies of `file`, by path and content (the first 12 bytes, in hex).
    pub fn digest(&self, file: &Path) -> std::io::Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for dependency in self.dependencies(file) {
            h.update(dependency.to_string_lossy().as_bytes());
            // Sources were read once by `read`; only the other files (cards, schemas, Cargo's) here.
            match self.texts.get(&dependency) {
                Some(text) => h.update(text.as_bytes()),
                None => h.update(std::fs::read(self.root.join(&dependency))?),
            }
        }
        Ok(h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect())
    }

    fn direct_dependencies(&self, file: &Path) -> Vec<PathBuf> {
        let Some(text) = self.texts.get(file) else { return Vec::new() };
        let module = module_of(file);
        let mut out = Vec::new();
        for path in module_paths(&module, text) {
            if let Some(target) = self.longest_module_prefix(&path) {
                out.push(self.modules[&target].clone());
                if !target.is_empty() {
                    out.extend(self.children(&target));
                }
            }
        }
        if !module.is_empty() {
            out.extend(self.children(&module));
        }
        let folder = file.parent().unwrap_or(Path::new(""));
        out.extend(included_files(text).into_iter().map(|name| normalise(&folder.join(name))));
        out
    }

    fn longest_module_prefix(&self, path: &[String]) -> Option<ModulePath> {
        (0..=path.len()).rev().map(|k| path[..k].to_vec()).find(|prefix| self.modules.contains_key(prefix))
    }

    fn children<'a>(&'a self, module: &'a ModulePath) -> impl Iterator<Item = PathBuf> + 'a {
        self.modules.iter().filter(move |(m, _)| m.len() == module.len() + 1 && m.starts_with(module)).map(|(_, f)| f.clone())
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() { collect(&path, out)? } else { out.push(path) }
    }
    Ok(())
}

/// src/a/b.rs and src/a/b/mod.rs are `a::b`; src/lib.rs is the root.
fn module_of(relative: &Path) -> ModulePath {
    let mut parts: Vec<String> = relative.with_extension("").iter().skip(1).map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// `a/b/../c` as `a/c`, so that an included file is named as the crate's listing names it.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The module paths, from the crate root, of every `crate::`, `super::` and `self::` path in
/// `text`, written in module `module`; a brace group gives one path per item.
pub fn module_paths(module: &[String], text: &str) -> Vec<ModulePath> {
    let tokens = tokens(text);
    let mut out = Vec::new();
    // Inline modules (`mod tests { ... }`) open inside the file's: `super::` in them is the file.
    let mut current = module.to_vec();
    let mut inline_at: Vec<usize> = Vec::new();
    let mut depth: usize = 0;
    for (i, token) in tokens.iter().enumerate() {
        match token.as_str() {
            "{" => {
                depth += 1;
                if i >= 2 && tokens[i - 2] == "mod" && is_identifier(&tokens[i - 1]) {
                    current.push(tokens[i - 1].clone());
                    inline_at.push(depth);
                }
            }
            "}" => {
                if inline_at.last() == Some(&depth) {
                    inline_at.pop();
                    current.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        let base = match token.as_str() {
            "crate" => Vec::new(),
            "super" => current[..current.len().saturating_sub(1)].to_vec(),
            "self" => current.clone(),
            _ => continue,
        };
        // Part of a longer path (`a::super::b`, `crate::x::self`) or not a path at all.
        if i > 0 && tokens[i - 1] == "::" || tokens.get(i + 1).map(String::as_str) != Some("::") {
            continue;
        }
        path_items(&tokens[i + 1..], base, &mut out);
    }
    out
}

/// Reads `::seg::seg::{item, item}` from the tokens, pushing every full path it names.
fn path_items(tokens: &[String], mut path: ModulePath, out: &mut Vec<ModulePath>) -> usize {
    let mut i = 0;
    while tokens.get(i).map(String::as_str) == Some("::") {
        match tokens.get(i + 1).map(String::as_str) {
            Some("{") => {
                i += 2;
                loop {
                    // Each item is a path relative to the group's prefix.
                    let mut item = path.clone();
                    i += group_item(&tokens[i..], &mut item, out);
                    match tokens.get(i).map(String::as_str) {
                        Some(",") => i += 1,
                        Some("}") => return i + 1,
                        _ => return i,
                    }
                }
            }
            Some("super") => {
                path.pop();
                i += 2;
            }
            Some(segment) if is_identifier(segment) => {
                path.push(segment.to_string());
                i += 2;
            }
            _ => break,
        }
    }
    out.push(path);
    i
}

/// One item of a brace group: `name`, `name::more`, `name::{...}`, `self`, `*`, `x as y`, or
/// nothing (a trailing comma).
fn group_item(tokens: &[String], path: &mut ModulePath, out: &mut Vec<ModulePath>) -> usize {
    match tokens.first().map(String::as_str) {
        Some("self") | Some("*") => {
            out.push(path.clone());
            1
        }
        Some("}") | Some(",") | None => 0,
        Some(segment) if is_identifier(segment) => {
            path.push(segment.to_string());
            let used = 1 + path_items(&tokens[1..], path.clone(), out);
            // `name as alias`: the alias names nothing of the crate's.
            if tokens.get(used).map(String::as_str) == Some("as") { used + 2 } else { used }
        }
        Some(_) => 1,
    }
}

/// Whether `text` has an `impl` block for a type it does not define: `impl Foreign`,
/// `impl Trait for Foreign<'_>`, `impl<T: X> Trait for T`. (`-> impl Trait` is no block.)
pub fn implements_for_foreign_types(text: &str) -> bool {
    let tokens = tokens(text);
    let defined: Vec<&str> =
        tokens.windows(2).filter(|w| matches!(w[0].as_str(), "struct" | "enum" | "type" | "trait" | "union")).map(|w| w[1].as_str()).collect();
    let starts_an_item = |i: usize| i == 0 || matches!(tokens[i - 1].as_str(), "}" | ";" | "]" | "{" | "unsafe");
    (0..tokens.len()).filter(|&i| tokens[i] == "impl" && starts_an_item(i)).any(|i| {
        let name = implemented_type(&tokens[i + 1..]);
        name.is_none_or(|n| !defined.contains(&n))
    })
}

/// The name of the type an `impl` header (the tokens after `impl`) is for: the last path
/// segment outside angle brackets, after `for` if there is one.
fn implemented_type(header: &[String]) -> Option<&str> {
    let mut depth = 0i32;
    let mut name = None;
    for token in header {
        match token.as_str() {
            "<" => depth += 1,
            ">" => depth -= 1,
            "{" | "where" if depth == 0 => break,
            "for" if depth == 0 => name = None,
            "dyn" | "mut" | "const" => {}
            t if depth == 0 && is_identifier(t) => name = Some(t),
            _ => {}
        }
    }
    name
}

fn is_identifier(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_') && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Words, `::`, and single punctuation characters. Comments (doc comments too), string and char
/// literals are dropped: a `crate::x` in prose or in a message is not code that runs.
fn tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if (word == "r" || word == "br") && matches!(chars.get(i), Some('"' | '#')) {
                i = end_of_raw_string(&chars, i);
            } else {
                out.push(word);
            }
        } else if c == '\'' {
            i = end_of_char(&chars, i);
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i = end_of_block_comment(&chars, i + 2);
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".to_string());
            i += 2;
        } else if c == '"' {
            i = end_of_string(&chars, i + 1);
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// The index after the closing quote of a string that starts at `i` (escapes skipped).
fn end_of_string(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// After the `*/` that closes a block comment whose text starts at `i` (they nest).
fn end_of_block_comment(chars: &[char], mut i: usize) -> usize {
    let mut depth = 1;
    while i < chars.len() && depth > 0 {
        match (chars[i], chars.get(i + 1)) {
            ('/', Some('*')) => (depth, i) = (depth + 1, i + 2),
            ('*', Some('/')) => (depth, i) = (depth - 1, i + 2),
            _ => i += 1,
        }
    }
    i
}

/// After `r"..."` or `r#"..."#` (the hashes at `i`, then the quote), or at `i` if it is none.
fn end_of_raw_string(chars: &[char], mut i: usize) -> usize {
    let start = i;
    while chars.get(i) == Some(&'#') {
        i += 1;
    }
    if chars.get(i) != Some(&'"') {
        return start;
    }
    let hashes = i - start;
    i += 1;
    while i < chars.len() {
        if chars[i] == '"' && chars[i + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// After a char literal at `i` (`'x'`, `'\n'`, `'\''`); a lifetime (`'a`) is a lone quote.
fn end_of_char(chars: &[char], i: usize) -> usize {
    match (chars.get(i + 1), chars.get(i + 2)) {
        (Some('\\'), _) => {
            let mut j = i + 3;
            while j < chars.len() && chars[j] != '\'' {
                j += 1;
            }
            j + 1
        }
        (Some(_), Some('\'')) => i + 3,
        _ => i + 1,
    }
}

/// The file names given to `include_str!`, `include_bytes!` and `include!` as plain literals.
pub fn included_files(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in ["include_str!(\"", "include_bytes!(\"", "include!(\""] {
        for (at, _) in text.match_indices(marker) {
            let rest = &text[at + marker.len()..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_string());
            }
        }
    }
    out
}
