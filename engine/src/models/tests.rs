use super::llama::LlamaConfig;
use super::qwen2::Qwen2Config;

fn llama(extra: serde_json::Value) -> Result<f32, String> {
    let mut config = serde_json::json!({
        "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "rms_norm_eps": 1e-6,
    });
    config
        .as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    let config: LlamaConfig = serde_json::from_value(config).map_err(|e| e.to_string())?;
    Ok(config.into_config()?.rope_theta)
}

#[test]
fn rope_theta_comes_from_rope_parameters_or_the_top_level() {
    assert_eq!(llama(serde_json::json!({})), Ok(10_000.0));
    assert_eq!(
        llama(serde_json::json!({"rope_theta": 500000.0})),
        Ok(500_000.0)
    );
    // transformers 5.
    assert_eq!(
        llama(serde_json::json!({
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}
        })),
        Ok(500_000.0)
    );
    let qwen: Qwen2Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 64,
    }))
    .expect("qwen2 config");
    assert_eq!(qwen.into_config().map(|c| c.rope_theta), Ok(1_000_000.0));
}

#[test]
fn scaled_rope_types_are_refused_not_ignored() {
    let err = llama(serde_json::json!({
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}
    }))
    .expect_err("llama3 scaling");
    assert!(err.contains("rope_type \"llama3\""), "{err}");
}
