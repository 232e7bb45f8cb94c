//! The code digests in stage fingerprints (build/code_deps.rs): each stage kind's covers the
//! files its behaviour can depend on, so an edit elsewhere keeps a run's finished stages, and an
//! edit to any of them reruns the stage.

use std::path::{Path, PathBuf};

use cloakbench::pipeline::run::{CODE_DIGEST, code_digest_of};
use cloakbench::stages::KINDS;

#[path = "../../build/code_deps.rs"]
#[allow(dead_code)]
mod code_deps;

use code_deps::{Crate, implements_for_foreign_types, included_files, module_paths};

fn names(paths: Vec<Vec<String>>) -> Vec<String> {
    paths.into_iter().map(|p| p.join("::")).collect()
}

#[test]
fn paths_are_read_through_brace_groups_super_and_self() {
    let module: Vec<String> = vec!["stages".into(), "cloak".into()];
    let text = r#"
        use crate::attack::{engine::{Engine, Working as W}, methods, self};
        use super::embed::*;
        pub(super) fn f() { crate::progress::info(true, "x"); self::g(); }
        use super::super::io::image;
        #[cfg(test)]
        mod tests { use super::*; mod deeper { use super::super::helper; } }
        use super::mix;
    "#;
    assert_eq!(
        names(module_paths(&module, text)),
        [
            "attack::engine::Engine",
            "attack::engine::Working",
            "attack::methods",
            "attack",
            "stages::embed",
            "progress::info",
            "stages::cloak::g",
            "io::image",
            "stages::cloak",
            "stages::cloak::helper",
            "stages::mix",
        ]
    );
}

#[test]
fn comments_strings_and_char_literals_name_nothing() {
    let module: Vec<String> = vec!["report".into()];
    let text = r####"
        //! the registry (`crate::stages::KINDS`) /* not a comment's start
        /* crate::cli /* nested crate::commands */ still crate::face */ let u = "s3://b"; // crate::rng
        let a = "crate::models::x"; let b = '"'; let c = r#"crate::io "quoted" here"#;
        let d = '\''; fn e<'a>(x: &'a str) {} use crate::tables::metrics;
    "####;
    assert_eq!(names(module_paths(&module, text)), ["tables::metrics"]);
}

#[test]
fn included_files_are_dependencies() {
    let text = r#"include_str!("cards/a.toml"), include_bytes!("../x.bin"), include!(concat!(env!("OUT_DIR"), "/g.rs"))"#;
    assert_eq!(included_files(text), ["cards/a.toml", "../x.bin"]);
}

#[test]
fn impls_for_types_defined_elsewhere_are_found() {
    assert!(!implements_for_foreign_types("struct A<'a>(&'a str); impl<'a> A<'a> {} impl Display for A<'_> {} fn f() -> impl Iterator<Item = u8> { }"));
    assert!(implements_for_foreign_types("use crate::tables::images::Picture; impl std::fmt::Display for Picture { }"));
    assert!(implements_for_foreign_types("pub trait Stage {} impl<T: StageConfig> Stage for T { }"));
    assert!(implements_for_foreign_types("impl Context<'_> { pub fn batches(&self) {} }"));
}

/// A small crate in a scratch folder: `a` names `b`, whose child `c` it therefore reaches;
/// `d` it does not name.
fn toy_crate() -> PathBuf {
    let root = crate::scratch("code-deps");
    let files = [
        ("Cargo.toml", ""),
        ("Cargo.lock", ""),
        ("build.rs", ""),
        ("build/code_deps.rs", ""),
        ("src/main.rs", ""),
        ("src/runtime.rs", ""),
        ("src/pipeline/mod.rs", "pub mod stage;"),
        ("src/pipeline/stage.rs", ""),
        ("src/lib.rs", "pub mod a; pub mod b; pub mod d; pub mod e;"),
        ("src/a.rs", "use crate::b::Thing; fn f() { crate::pipeline::stage::x(); }"),
        ("src/b/mod.rs", "mod c; pub use c::Thing; const CARD: &str = include_str!(\"card.toml\");"),
        ("src/b/c.rs", "pub struct Thing;"),
        ("src/b/card.toml", "year = 2019"),
        ("src/d.rs", "use crate::a;"),
        ("src/e.rs", "impl std::fmt::Display for crate::b::Thing { }"),
    ];
    for (name, text) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    root
}

fn strings(files: std::collections::BTreeSet<PathBuf>) -> Vec<String> {
    files.iter().map(|f| f.to_string_lossy().into_owned()).collect()
}

#[test]
fn a_file_depends_on_what_it_names_their_children_and_the_core_and_nothing_else() {
    let root = toy_crate();
    let krate = Crate::read(&root).unwrap();
    let a = strings(krate.dependencies(Path::new("src/a.rs")));
    // e names nothing a names, but gives b's Thing a Display that a may use.
    for expected in
        ["src/a.rs", "src/b/mod.rs", "src/b/c.rs", "src/b/card.toml", "src/e.rs", "src/pipeline/mod.rs", "src/pipeline/stage.rs", "src/lib.rs", "Cargo.lock"]
    {
        assert!(a.contains(&expected.to_string()), "{expected} missing from {a:?}");
    }
    assert!(!a.contains(&"src/d.rs".to_string()), "{a:?}");
    // d names a, so it depends on all a depends on.
    let d = strings(krate.dependencies(Path::new("src/d.rs")));
    assert!(a.iter().all(|f| d.contains(f)), "{d:?}");

    // An edit to a dependency changes the digest; an edit elsewhere does not.
    let before = krate.digest(Path::new("src/a.rs")).unwrap();
    std::fs::write(root.join("src/d.rs"), "use crate::a; // edited").unwrap();
    assert_eq!(Crate::read(&root).unwrap().digest(Path::new("src/a.rs")).unwrap(), before);
    std::fs::write(root.join("src/b/card.toml"), "year = 2020").unwrap();
    let after_card = Crate::read(&root).unwrap().digest(Path::new("src/a.rs")).unwrap();
    assert_ne!(after_card, before);
    std::fs::write(root.join("src/b/c.rs"), "pub struct Thing(u8);").unwrap();
    assert_ne!(Crate::read(&root).unwrap().digest(Path::new("src/a.rs")).unwrap(), after_card);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn the_cloak_stage_covers_its_attack_and_models_and_not_the_report_or_other_stages() {
    let krate = Crate::read(&crate::repo()).unwrap();
    let cloak = strings(krate.dependencies(Path::new("src/stages/cloak.rs")));
    for expected in [
        "src/attack/engine.rs",
        "src/attack/methods.rs",
        "src/models/dlib_resnet29.rs",
        "src/models/cards/dlib_resnet29_150.toml",
        "src/face/align.rs",
        "src/io/image.rs",
        "src/pipeline/run.rs",
        "src/runtime.rs",
    ] {
        assert!(cloak.contains(&expected.to_string()), "{expected} missing from the cloak stage's dependencies");
    }
    for unrelated in ["src/report/html.rs", "src/cli.rs", "src/commands/bench.rs", "src/stages/classify.rs", "src/stages.rs"] {
        assert!(!cloak.contains(&unrelated.to_string()), "{unrelated} in the cloak stage's dependencies");
    }
}

#[test]
fn every_stage_kind_has_its_own_code_digest_from_the_build() {
    for kind in KINDS {
        let digest = code_digest_of(kind.source);
        assert_ne!(digest, CODE_DIGEST, "{} ({}) was not listed by the build", kind.name, kind.source);
        assert_eq!(digest.len(), 24, "{}", kind.name);
    }
    let of = |name: &str| code_digest_of(KINDS.iter().find(|k| k.name == name).unwrap().source);
    assert_ne!(of("cloak"), of("classify"));
    // The build's digest and this test's, from the same files, agree.
    let krate = Crate::read(&crate::repo()).unwrap();
    assert_eq!(krate.digest(Path::new("src/stages/cloak.rs")).unwrap(), of("cloak"));
}

/// Calls that change state the whole process shares (thread counts, the allocator, the
/// environment, the working directory): a stage's results can depend on them without its code
/// naming the file that made them, which its code digest cannot see.
const PROCESS_WIDE_SETTERS: &[&str] =
    &["set_num_threads(", "set_num_interop_threads(", "env::set_var(", "env::remove_var(", "mallopt(", "build_global(", "set_current_dir("];

/// Files allowed to call them although not every stage's digest covers them, and why.
const SETTERS_OUTSIDE_THE_DIGESTS: &[(&str, &str)] = &[
    ("src/face/mtcnn.rs", "sets its own worker threads' count and restores the process's before it returns"),
    ("src/commands/bench.rs", "benchmarks only, never part of a run"),
];

#[test]
fn process_wide_state_is_set_only_where_every_stage_digest_sees_it() {
    let root = crate::repo();
    let krate = Crate::read(&root).unwrap();
    let mut in_every_digest: Option<std::collections::BTreeSet<PathBuf>> = None;
    for kind in KINDS {
        let deps = krate.dependencies(Path::new(kind.source));
        in_every_digest = Some(match in_every_digest {
            None => deps,
            Some(so_far) => so_far.intersection(&deps).cloned().collect(),
        });
    }
    let in_every_digest = in_every_digest.unwrap();
    assert!(in_every_digest.contains(Path::new("src/runtime.rs")), "runtime.rs, where runs set process-wide state, left a stage's digest");
    let mut offenders = Vec::new();
    for file in krate.sources() {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let code = text.lines().filter(|line| !line.trim_start().starts_with("//"));
        let sets = code.flat_map(|line| PROCESS_WIDE_SETTERS.iter().filter(move |s| line.contains(**s))).next();
        let name = file.to_string_lossy();
        let excused = SETTERS_OUTSIDE_THE_DIGESTS.iter().any(|(f, _)| *f == name);
        if let Some(setter) = sets
            && !in_every_digest.contains(file)
            && !excused
        {
            offenders.push(format!("{name} calls {setter}.."));
        }
    }
    assert!(
        offenders.is_empty(),
        "process-wide state set where some stage's code digest cannot see it: {offenders:?}; \
         set it in src/runtime.rs (every stage's digest covers it), or restore it before returning \
         and list the file in SETTERS_OUTSIDE_THE_DIGESTS with the reason"
    );
    // The excuses stay true: each excused file still exists and still needs one.
    for (file, why) in SETTERS_OUTSIDE_THE_DIGESTS {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file} ({why}): {e}"));
        assert!(PROCESS_WIDE_SETTERS.iter().any(|s| text.contains(s)), "{file} no longer sets process-wide state: drop its excuse");
    }
}
