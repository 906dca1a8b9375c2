use super::*;

#[test]
fn parses_hub_ids() {
    assert_eq!(
        HubId::parse("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:qwen.gguf@v1"),
        Some(HubId {
            repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF".into(),
            file: Some("qwen.gguf".into()),
            revision: "v1".into()
        })
    );
    assert_eq!(
        HubId::parse("a/b").map(|id| id.revision),
        Some("main".into())
    );
    assert_eq!(HubId::parse("no-slash"), None);
    assert_eq!(HubId::parse("a/b/c"), None);
    assert_eq!(HubId::parse("../x"), None);
    assert_eq!(HubId::parse("a/.."), None);
    assert_eq!(HubId::parse(".hidden/x"), None);
}

#[test]
fn prefers_q4_k_m_among_several_ggufs() {
    let id = HubId::parse("o/n").expect("valid");
    let files = vec!["a-q8_0.gguf".to_string(), "a-Q4_K_M.gguf".to_string()];
    assert!(matches!(choose_files(&id, &files), Ok(Choice::Gguf(f)) if f == "a-Q4_K_M.gguf"));
    let files = vec!["a-q8_0.gguf".to_string(), "a-f16.gguf".to_string()];
    assert!(choose_files(&id, &files).is_err());
}
