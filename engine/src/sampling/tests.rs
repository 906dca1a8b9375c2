use super::*;

#[test]
fn greedy_picks_argmax_and_lowest_id_on_ties() {
    let mut sampler = Sampler::new(&SamplingParams::greedy(), 0, 0);
    assert_eq!(sampler.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
}

#[test]
fn same_seed_same_tokens_different_seed_differs() {
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed: Some(7),
    };
    let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
    let draw = |seed: u64| {
        let mut sampler = Sampler::new(&params, seed, 0);
        (0..64).map(|_| sampler.sample(&logits)).collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}

#[test]
fn top_k_one_is_greedy() {
    let params = SamplingParams {
        temperature: 5.0,
        top_p: 1.0,
        top_k: 1,
        seed: None,
    };
    let mut sampler = Sampler::new(&params, 3, 0);
    for _ in 0..20 {
        assert_eq!(sampler.sample(&[0.0, 0.5, 2.0, 1.9]), 2);
    }
}

#[test]
fn nucleus_keeps_smallest_prefix_reaching_mass() {
    // Weights 0.5, 0.3, 0.15, 0.05: top_p 0.8 keeps exactly the first two.
    let kept = nucleus(vec![(3, 0.05), (0, 0.5), (2, 0.15), (1, 0.3)], 0.8);
    assert_eq!(
        kept.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        vec![0, 1]
    );
    let kept = nucleus(vec![(3, 0.05), (0, 0.5), (2, 0.15), (1, 0.3)], 0.81);
    assert_eq!(
        kept.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

#[test]
fn nucleus_is_exact_with_a_long_flat_tail() {
    // 10 heavy tokens and 100k tiny ones: the tail alone holds most of the mass.
    let mut candidates: Vec<(u32, f32)> = (0..10).map(|id| (id, 1.0)).collect();
    candidates.extend((10..100_010).map(|id| (id, 1e-3)));
    let kept = nucleus(candidates, 0.5);
    // Total 110; half is 55: the 10 heavy ones (10) plus 45_000 tail tokens.
    assert_eq!(kept.len(), 10 + 45_000);
}

#[test]
fn logprobs_are_normalized() {
    let logits = [1.0f32, 2.0, 3.0, -4.0];
    let lse = log_sum_exp(&logits);
    let total: f32 = logits.iter().map(|l| (l - lse).exp()).sum();
    assert!((total - 1.0).abs() < 1e-6);
    let top = top_logprobs(&logits, lse, 2);
    assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
    assert!(top.iter().all(|t| t.1 <= 0.0));
}
