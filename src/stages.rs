//! The registry: every stage kind a pipeline file can name, handed to the pipeline core. Each
//! kind lives in its own module (`src/stages/<kind>.rs`) with its configuration, its work and
//! its tests; stages share tables (`crate::tables`) and machinery (`crate::io`,
//! `crate::pipeline::batch`), never each other's code.

pub mod adapt;
pub mod classify;
pub mod cloak;
pub mod cluster;
pub mod detect;
pub mod detect_cloaks;
pub mod embed;
pub mod evaluate;
pub mod filter;
pub mod finetune;
pub mod ingest;
pub mod mix;
pub mod results;
pub mod split;
pub mod verify;

use crate::pipeline::Kind;

/// Every stage kind, in the order a pipeline usually runs them.
pub const KINDS: &[Kind] = &[
    ingest::KIND,
    split::KIND,
    detect::KIND,
    cloak::KIND,
    mix::KIND,
    filter::KIND,
    embed::KIND,
    adapt::KIND,
    classify::KIND,
    finetune::KIND,
    evaluate::KIND,
    verify::KIND,
    detect_cloaks::KIND,
    cluster::KIND,
    results::KIND,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::shards::{self, Step};

    #[test]
    fn every_bundled_pipeline_plans() {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines"));
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            crate::pipeline::load(&path, &[], KINDS).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
        assert!(n > 0, "no pipelines found in {}", dir.display());
    }

    #[test]
    fn identical_stages_run_once_and_their_tables_become_aliases() {
        let text = "[pipeline]\nname = 't'\n[stages.ingest]\nkind = 'ingest'\ndataset = '.'\n\
            [stages.embed]\nkind = 'embed'\nmodel = 'dlib_resnet29_150'\nfan_out = { batch_size = [32, 16] }\n\
            [stages.again]\nkind = 'embed'\nmodel = 'dlib_resnet29_150'\nbatch_size = 32\noutputs = { embeddings = 'same' }\n\
            [stages.verify]\nkind = 'verify'\ninputs = { images = 'images', embeddings = ['embeddings[*]', 'same'] }\n";
        let plan = crate::pipeline::parse(text, &[], KINDS).unwrap();
        let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ingest", "embed-32", "embed-16", "verify"]);
        assert_eq!(plan.aliases["same"], "embeddings-32");
        let verify = plan.stages.last().unwrap();
        assert_eq!(verify.inputs["embeddings"], ["embeddings-32", "embeddings-16"], "an alias is read once");
    }

    #[test]
    fn the_zoo_fans_out_over_every_model_and_gathers_them_for_one_classifier() {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines"));
        let plan = crate::pipeline::load(&dir.join("zoo_facescrub12.toml"), &[], KINDS).unwrap();
        let embeds: Vec<&str> = plan.stages.iter().filter(|s| s.kind.name == "embed").map(|s| s.name.as_str()).collect();
        assert_eq!(embeds.len(), 7);
        assert!(embeds.contains(&"embed-dlib_resnet29_150"), "{embeds:?}");
        let classify = plan.stages.iter().find(|s| s.name == "classify").unwrap();
        assert_eq!(classify.inputs["embeddings"].len(), 7);
        assert!(plan.stages.iter().position(|s| s.name == "classify") > plan.stages.iter().position(|s| s.kind.name == "embed"));
    }

    #[test]
    fn picture_stages_wait_for_the_commit_of_the_dataset_stages_they_read() {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines"));
        let plan = crate::pipeline::load(&dir.join("baseline.toml"), &[], KINDS).unwrap();
        let steps = shards::steps(&plan);
        let of = |name: &str| steps[plan.stages.iter().position(|s| s.name == name).unwrap()];
        assert_eq!(of("ingest"), Step::Shards(0));
        assert_eq!(of("split"), Step::Commit(0));
        // embed reads only images: it runs with ingest in phase 0
        assert_eq!(of("embed"), Step::Shards(0));
        assert_eq!(of("classify"), Step::Commit(0));
        assert_eq!(of("evaluate"), Step::Commit(0));
        let plan = crate::pipeline::load(&dir.join("protect.toml"), &[], KINDS).unwrap();
        let steps = shards::steps(&plan);
        let cloak = plan.stages.iter().position(|s| s.kind.name == "cloak").unwrap();
        assert_eq!(steps[cloak], Step::Shards(1), "the cloak reads the split: it waits for the first commit");
        assert_eq!(shards::phases(&steps), 2);
    }
}
