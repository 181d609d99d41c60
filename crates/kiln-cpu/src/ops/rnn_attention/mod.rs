//! CPU kernels for the recurrent and attention family: Attention, LinearAttention,
//! FlexAttention, RotaryEmbedding, SwiGLU, RNN, GRU and LSTM.

mod attention;
mod common;
mod flex_attention;
mod linear_attention;
mod rnn;
mod rotary;
mod swiglu;

use crate::KernelFn;

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Attention" => attention::attention,
        "RNN" => rnn::rnn,
        "GRU" => rnn::gru,
        "LSTM" => rnn::lstm,
        "RotaryEmbedding" => rotary::rotary_embedding,
        "SwiGLU" => swiglu::swiglu,
        "LinearAttention" => linear_attention::linear_attention,
        "FlexAttention" => flex_attention::flex_attention,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    //! Expected values come from the ONNX reference implementation (float64 printouts) on
    //! inputs `sin(i·a + b)`, which exercise every element with distinct nonzero values.

    use kiln_ir::{Attribute, Attributes, Network, Tensor, TensorType, ValueType};

    /// `sin(i·a + b)` for i in 0..numel(shape).
    fn seq(shape: &[usize], a: f64, b: f64) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|i| (i as f64 * a + b).sin() as f32).collect()).unwrap()
    }

    /// Runs a one-layer network; `None` inputs are omitted optional inputs.
    fn run(op: &str, attrs: Attributes, inputs: Vec<Option<Tensor>>, n_out: usize) -> Vec<Tensor> {
        crate::test_util::run_layer(op, attrs, &inputs, n_out).unwrap()
    }

    fn assert_close(got: &Tensor, want: &[f64]) {
        let g = got.to_f64_vec();
        assert_eq!(g.len(), want.len(), "length");
        for (i, (&a, &b)) in g.iter().zip(want).enumerate() {
            let ok = a == b || (a - b).abs() <= 2e-5 + 1e-5 * b.abs();
            assert!(ok, "element {i}: got {a}, want {b}\n got {g:?}");
        }
    }

    const NEG_INF: f64 = f64::NEG_INFINITY;

    #[test]
    fn attention_gqa_past_causal_padded_mask_softcap() {
        // Hq 4 over Hkv 2, past 2 + new 2 keys, causal offset 2, a float mask shorter than the
        // keys (padded with -inf), softcap and the mode-2 (qk + softcap + bias) output.
        let attrs = Attributes::new()
            .with("is_causal", Attribute::Int(1))
            .with("softcap", Attribute::Float(2.0))
            .with("qk_matmul_output_mode", Attribute::Int(2))
            .with("scale", Attribute::Float(0.6));
        let out = run(
            "Attention",
            attrs,
            vec![
                Some(seq(&[1, 4, 2, 3], 0.37, 0.0)),
                Some(seq(&[1, 2, 2, 3], 0.53, 1.0)),
                Some(seq(&[1, 2, 2, 2], 0.71, 0.5)),
                Some(seq(&[2, 3], 0.9, 0.2)),
                Some(seq(&[1, 2, 2, 3], 0.29, 2.0)),
                Some(seq(&[1, 2, 2, 2], 0.41, 3.0)),
            ],
            4,
        );
        assert_close(
            &out[0],
            &[
                0.1189923, 0.2042695, 0.1514378, -0.0367684, 0.1186652, 0.1912996, -0.1368168, -0.3857733, -0.5583786,
                -0.652003, -0.7773606, -0.762944, -0.5759638, -0.6740241, -0.8183411, -0.8033727,
            ],
        );
        assert_eq!(out[1].shape(), [1, 2, 4, 3]);
        // present_key = past ++ new along the sequence, per head.
        let (past, new) = (seq(&[1, 2, 2, 3], 0.29, 2.0).to_f64_vec(), seq(&[1, 2, 2, 3], 0.53, 1.0).to_f64_vec());
        let want: Vec<f64> = (0..2).flat_map(|h| [&past[h * 6..h * 6 + 6], &new[h * 6..h * 6 + 6]].concat()).collect();
        assert_close(&out[1], &want);
        assert_close(
            &out[3],
            &[
                0.5728898, 0.7645787, 1.4679552, NEG_INF, 1.3452322, -0.6537509, 0.3045535, NEG_INF, 0.8968773,
                0.9806839, 1.679427, NEG_INF, -0.340795, -0.4904813, -1.7906241, NEG_INF, 1.3310817, 2.2398062,
                2.2134449, NEG_INF, 0.6223029, -0.0244578, -0.4581991, NEG_INF, -0.6768599, -0.1090341, -0.0642896,
                NEG_INF, -0.8510097, -1.9301076, -2.2711511, NEG_INF,
            ],
        );
    }

    #[test]
    fn attention_fully_masked_row_is_zero() {
        let mask = Tensor::from_vec(vec![2, 3], vec![true, false, true, false, false, false]).unwrap();
        let attrs = Attributes::new().with("qk_matmul_output_mode", Attribute::Int(3));
        let out = run(
            "Attention",
            attrs,
            vec![
                Some(seq(&[1, 1, 2, 2], 0.37, 0.0)),
                Some(seq(&[1, 1, 3, 2], 0.53, 1.0)),
                Some(seq(&[1, 1, 3, 2], 0.71, 0.5)),
                Some(mask),
            ],
            4,
        );
        assert_close(&out[0], &[0.2046604, 0.2353791, 0.0, 0.0]);
        assert_close(&out[3], &[0.5938634, 0.0, 0.4061366, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn rotary_interleaved_partial_with_positions() {
        let attrs =
            Attributes::new().with("interleaved", Attribute::Int(1)).with("rotary_embedding_dim", Attribute::Int(4));
        let pos = Tensor::from_vec(vec![1, 2], vec![3i64, 1]).unwrap();
        let out = run(
            "RotaryEmbedding",
            attrs,
            vec![
                Some(seq(&[1, 2, 2, 6], 0.31, 0.0)),
                Some(seq(&[4, 2], 0.17, 0.3)),
                Some(seq(&[4, 2], 0.23, 0.9)),
                Some(pos),
            ],
            1,
        );
        assert_close(
            &out[0],
            &[
                -0.2315031, 0.2955149, 0.1058384, 1.142066, 0.945784, 0.9997838, -0.2351112, 1.4304103, 0.1006534,
                0.8637008, 0.0415807, -0.2651961, 0.0593554, -1.1666625, -0.3391399, -1.5447618, -0.9695007,
                -0.8485217, -0.011525, -0.8611419, -0.2850141, 0.0797999, 0.5114013, 0.7491744,
            ],
        );
    }

    #[test]
    fn linear_attention_gated_delta_gqa() {
        let attrs = Attributes::new()
            .with("q_num_heads", Attribute::Int(2))
            .with("kv_num_heads", Attribute::Int(1))
            .with("update_rule", Attribute::String("gated_delta".into()));
        let g = seq(&[1, 3, 2], 0.3, 0.1).to_f64_vec().iter().map(|x| -x.abs() as f32).collect();
        let beta = seq(&[1, 3, 1], 0.8, 0.4).to_f64_vec().iter().map(|x| x.abs() as f32).collect();
        let out = run(
            "LinearAttention",
            attrs,
            vec![
                Some(seq(&[1, 3, 4], 0.37, 0.0)),
                Some(seq(&[1, 3, 2], 0.53, 1.0)),
                Some(seq(&[1, 3, 2], 0.71, 0.5)),
                None,
                Some(Tensor::from_vec(vec![1, 3, 2], g).unwrap()),
                Some(Tensor::from_vec(vec![1, 3, 1], beta).unwrap()),
            ],
            2,
        );
        assert_close(
            &out[0],
            &[
                0.0476989, 0.093086, 0.1930514, 0.3767467, 0.8643304, 0.4617479, 0.6076845, 0.3197364, 0.0063834,
                -0.0407433, -0.237874, -0.2939742,
            ],
        );
        assert_close(&out[1], &[0.2880447, 0.1301388, 0.2295439, 0.4331267]);
    }

    #[test]
    fn gru_bidirectional_linear_before_reset() {
        let attrs = Attributes::new()
            .with("hidden_size", Attribute::Int(2))
            .with("direction", Attribute::String("bidirectional".into()))
            .with("linear_before_reset", Attribute::Int(1));
        let out = run(
            "GRU",
            attrs,
            vec![
                Some(seq(&[3, 2, 3], 0.37, 0.0)),
                Some(seq(&[2, 6, 3], 0.53, 1.0)),
                Some(seq(&[2, 6, 2], 0.71, 0.5)),
                Some(seq(&[2, 12], 0.29, 2.0)),
                None,
                Some(seq(&[2, 2, 2], 0.41, 3.0)),
            ],
            2,
        );
        assert_close(
            &out[0],
            &[
                0.244694, -0.5807405, -0.401506, -0.9417771, -0.561959, -0.3384862, -0.8124245, 0.4063255, 0.3648996,
                -0.5016889, -0.9272366, -0.8240961, -0.8172994, -0.499368, -0.0160435, 0.1371832, -0.8994588,
                -0.4877328, -0.9609549, -0.9606518, -0.8556775, -0.7420436, -0.2552682, -0.2056438,
            ],
        );
        assert_close(
            &out[1],
            &[-0.8994588, -0.4877328, -0.9609549, -0.9606518, -0.561959, -0.3384862, -0.8124245, 0.4063255],
        );
    }

    #[test]
    fn lstm_peepholes_initial_states() {
        let out = run(
            "LSTM",
            Attributes::new().with("hidden_size", Attribute::Int(2)),
            vec![
                Some(seq(&[3, 2, 3], 0.37, 0.0)),
                Some(seq(&[1, 8, 3], 0.53, 1.0)),
                Some(seq(&[1, 8, 2], 0.71, 0.5)),
                Some(seq(&[1, 16], 0.29, 2.0)),
                None,
                Some(seq(&[1, 2, 2], 0.41, 3.0)),
                Some(seq(&[1, 2, 2], 0.13, 1.3)),
                Some(seq(&[1, 6], 0.6, 0.7)),
            ],
            3,
        );
        assert_close(
            &out[0],
            &[
                -0.0442955, 0.0255186, -0.0070297, 0.2578165, -0.0459679, -0.0854284, 0.0651286, -0.0771612, 0.0048228,
                -0.1055637, 0.0481298, -0.0888135,
            ],
        );
        assert_close(&out[1], &[0.0048228, -0.1055637, 0.0481298, -0.0888135]);
        assert_close(&out[2], &[0.0053426, -0.3343618, 0.0748192, -0.2308467]);
    }

    #[test]
    fn reverse_gru_sequence_lens_matches_truncated_run() {
        // Batch entry 1 has length 1: its reverse pass must start at step 0, leave later
        // outputs zero, and equal a run on that step alone.
        let attrs = || {
            Attributes::new()
                .with("hidden_size", Attribute::Int(2))
                .with("direction", Attribute::String("reverse".into()))
        };
        let x = seq(&[3, 2, 3], 0.37, 0.0);
        let (w, r) = (seq(&[1, 6, 3], 0.53, 1.0), seq(&[1, 6, 2], 0.71, 0.5));
        let lens = Tensor::from_vec(vec![2], vec![3i32, 1]).unwrap();
        let full = run("GRU", attrs(), vec![Some(x.clone()), Some(w.clone()), Some(r.clone()), None, Some(lens)], 2);
        let xv = x.to_f64_vec();
        let x1 = Tensor::from_vec(vec![1, 1, 3], xv[3..6].iter().map(|&v| v as f32).collect()).unwrap();
        let single = run("GRU", attrs(), vec![Some(x1), Some(w), Some(r)], 2);
        let y = full[0].to_f64_vec();
        let s = single[0].to_f64_vec();
        // Y is (seq, dirs, batch, hidden): entry 1 at step 0 is y[2..4]; steps 1, 2 are zero.
        assert_close(&Tensor::from_vec(vec![2], vec![y[2] as f32, y[3] as f32]).unwrap(), &s);
        assert_eq!([y[6], y[7], y[10], y[11]], [0.0; 4]);
        let yh = full[1].to_f64_vec();
        assert_close(&Tensor::from_vec(vec![2], vec![yh[2] as f32, yh[3] as f32]).unwrap(), &s);
    }

    #[test]
    fn flex_attention_gqa_with_score_mod_subgraph() {
        // score_mod(s) = SwiGLU(s, s) = s² · sigmoid(s), run as a subgraph on (B, Hq, L, S).
        let mut g = Network::new("score_mod");
        let s = g
            .add_input("s", ValueType::Tensor(TensorType::new(kiln_ir::DType::F32, vec![kiln_ir::Dim::Unknown; 4])))
            .unwrap();
        let out = g.add_layer("swiglu", "SwiGLU", Attributes::new(), &[Some(s), Some(s)], &["y"]).unwrap();
        g.mark_output(out[0].unwrap()).unwrap();
        let attrs = Attributes::new().with("score_mod", Attribute::from(g)).with("scale", Attribute::Float(0.8));
        let out = run(
            "FlexAttention",
            attrs,
            vec![
                Some(seq(&[1, 2, 2, 3], 0.37, 0.0)),
                Some(seq(&[1, 1, 3, 3], 0.53, 1.0)),
                Some(seq(&[1, 1, 3, 2], 0.71, 0.5)),
            ],
            1,
        );
        assert_close(&out[0], &[0.388498, 0.2560905, 0.4664975, 0.869625, 0.3890623, 0.3530082, 0.2294283, -0.0414813]);
    }

    #[test]
    fn attention_empty_query_sequence() {
        let q = Tensor::from_vec(vec![1, 2, 0, 3], Vec::<f32>::new()).unwrap();
        let out = run(
            "Attention",
            Attributes::new(),
            vec![Some(q), Some(seq(&[1, 2, 4, 3], 0.53, 1.0)), Some(seq(&[1, 2, 4, 5], 0.71, 0.5))],
            4,
        );
        assert_eq!(out[0].shape(), [1, 2, 0, 5]);
        assert_eq!(out[3].shape(), [1, 2, 0, 4]);
    }

    #[test]
    fn swiglu_alpha() {
        let a = seq(&[5], 0.9, 0.3);
        let b = seq(&[5], 0.4, 1.1);
        let alpha = 1.7f64;
        let want: Vec<f64> =
            a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(&x, g)| x / (1.0 + (-alpha * x).exp()) * g).collect();
        let out = run("SwiGLU", Attributes::new().with("alpha", Attribute::Float(1.7)), vec![Some(a), Some(b)], 1);
        assert_close(&out[0], &want);
    }
}
