//! The Hugging Face Hub path without a network: a hand-built cache in the hub layout
//! (`models--owner--name/refs/main`, `blobs/<etag>`, `snapshots/<commit>/<file>` → blob) resolved
//! with `local_files_only`, then loaded into the trunk.

use std::path::Path;

use candle_core::Device;
use dmm_model::weights::load_trunk;
use dmm_model::{DmmModel, ModelConfig, Variant, WeightSource};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn build_cache(cache: &Path, repo_dir: &str, file: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dmm_w8.safetensors");
    let root = cache.join(repo_dir);
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(root.join("snapshots").join(COMMIT)).unwrap();
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();
    let blob = root.join("blobs/5f1c0ffee");
    std::fs::copy(fixture, &blob).unwrap();
    std::os::unix::fs::symlink(&blob, root.join("snapshots").join(COMMIT).join(file)).unwrap();
}

#[test]
fn offline_hub_source_resolves_from_the_cache_and_loads() {
    let cache = tempfile::tempdir().unwrap();
    build_cache(cache.path(), "models--timm--resnet50-w8", "model.safetensors");
    let source: WeightSource = "hf://timm/resnet50-w8".parse().unwrap();
    let path = source.resolve(true, Some(cache.path())).unwrap();
    assert!(path.ends_with(format!("snapshots/{COMMIT}/model.safetensors")), "{}", path.display());
    let cfg = ModelConfig { variant: Variant::DmmCnn, width: 8, n_points: 68, ..ModelConfig::paper() };
    let (_, varmap) = DmmModel::fresh(&cfg, &Device::Cpu).unwrap();
    assert_eq!(load_trunk(&varmap, &path).unwrap().loaded, 265);
}

#[test]
fn offline_miss_says_so() {
    let cache = tempfile::tempdir().unwrap();
    build_cache(cache.path(), "models--timm--resnet50-w8", "model.safetensors");
    let source: WeightSource = "hf://timm/resnet50-w8/other.safetensors".parse().unwrap();
    let err = source.resolve(true, Some(cache.path())).unwrap_err().to_string();
    assert!(err.starts_with("hf://timm/resnet50-w8/other.safetensors: "), "{err}");
    assert!(err.contains("offline"), "{err}");
    let source: WeightSource = "hf://nobody/nothing".parse().unwrap();
    assert!(source.resolve(true, Some(cache.path())).is_err());
}
