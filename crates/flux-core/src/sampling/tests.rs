//! Unit tests of the sampler math.

use ndarray::Array;

use super::*;

#[test]
fn latent_shape_is_a_sixteenth_of_the_image_per_packed_token() {
    assert_eq!(latent_shape(2, 1024, 768).expect("valid"), [2, 16, 128, 96]);
    assert_eq!(latent_shape(1, 16, 16).expect("valid"), [1, 16, 2, 2]);
    assert_eq!(image_seq_len(1024, 1024), 4096);
}

#[test]
fn latent_shape_rejects_bad_sizes() {
    for (batch, height, width, param) in [
        (1, 0, 64, "height"),
        (1, 64, 0, "width"),
        (1, 72, 64, "height"),
        (1, 64, 8, "width"),
        (0, 64, 64, "batch"),
    ] {
        match latent_shape(batch, height, width) {
            Err(FluxError::InvalidInput { param: got, .. }) => assert_eq!(got, param),
            other => panic!("{batch}x{height}x{width}: {other:?}"),
        }
    }
}

#[test]
fn pack_orders_features_channel_then_patch_row_then_patch_column() {
    // Value = 1000·c + 100·y + x identifies each latent cell.
    let latents =
        Array::from_shape_fn((1, 2, 4, 6), |(_, c, y, x)| (1000 * c + 100 * y + x) as f32);
    let packed = pack_latents(latents.view()).expect("even sides");
    assert_eq!(packed.shape(), &[1, 6, 8]);
    // Token 4 is patch row 1, patch column 1: latent rows 2-3, columns 2-3.
    let token: Vec<f32> = packed.slice(ndarray::s![0, 4, ..]).to_vec();
    assert_eq!(
        token,
        [202.0, 203.0, 302.0, 303.0, 1202.0, 1203.0, 1302.0, 1303.0]
    );
}

#[test]
fn unpack_inverts_pack() {
    let latents = Array::from_shape_fn((2, 16, 6, 4), |(b, c, y, x)| {
        (b * 7 + c * 13 + y * 17 + x) as f32 * 0.5
    });
    let packed = pack_latents(latents.view()).expect("even sides");
    assert_eq!(packed.shape(), &[2, 6, 64]);
    let restored = unpack_latents(packed.view(), 48, 32).expect("consistent shape");
    assert_eq!(restored, latents);
}

#[test]
fn pack_and_unpack_reject_inconsistent_shapes() {
    assert!(pack_latents(Array4::<f32>::zeros((1, 16, 3, 4)).view()).is_err());
    let packed = Array3::<f32>::zeros((1, 6, 64));
    assert!(unpack_latents(packed.view(), 48, 48).is_err());
    assert!(unpack_latents(packed.view(), 40, 32).is_err());
    assert!(unpack_latents(Array3::<f32>::zeros((1, 6, 62)).view(), 48, 32).is_err());
}

#[test]
fn image_ids_enumerate_the_token_grid_row_major() {
    let ids = image_ids(32, 48);
    assert_eq!(ids.shape(), &[6, 3]);
    assert_eq!(ids.row(4).to_vec(), [0.0, 1.0, 1.0]);
    assert_eq!(ids.row(5).to_vec(), [0.0, 1.0, 2.0]);
    assert!(ids.column(0).iter().all(|&v| v == 0.0));
    let text = text_ids(5);
    assert_eq!(text.shape(), &[5, 3]);
    assert!(text.iter().all(|&v| v == 0.0));
}

#[test]
fn mu_interpolates_between_the_configured_points() {
    let cfg = SchedulerConfig::default();
    assert!((compute_mu(256, &cfg) - 0.5).abs() < 1e-12);
    assert!((compute_mu(4096, &cfg) - 1.15).abs() < 1e-12);
    assert!((compute_mu(2176, &cfg) - 0.825).abs() < 1e-12);
}

#[test]
fn linspace_matches_numpy() {
    // numpy.linspace(1.0, 0.25, 4) == [1.0, 0.75, 0.5, 0.25]; with N = 3 the middle value is
    // 1 + 1·(-1/3) in double.
    assert_eq!(numpy_linspace(1.0, 0.25, 4), [1.0, 0.75, 0.5, 0.25]);
    assert_eq!(
        numpy_linspace(1.0, 1.0 / 3.0, 3),
        [1.0, 1.0 + (1.0 / 3.0 - 1.0) / 2.0, 1.0 / 3.0]
    );
    assert_eq!(numpy_linspace(1.0, 1.0, 1), [1.0]);
}

#[test]
fn dev_sigmas_start_at_one_decrease_and_end_at_zero() {
    let sigmas = flux_sigmas(28, 4096, &SchedulerConfig::default()).expect("valid");
    assert_eq!(sigmas.len(), 29);
    assert_eq!(sigmas[0], 1.0);
    assert_eq!(sigmas[28], 0.0);
    assert!(sigmas.windows(2).all(|pair| pair[0] > pair[1]));
    // Shifting with mu = 1.15 pushes the schedule up: sigma' = e^mu / (e^mu + 1/s - 1).
    let last = 1.0f64 / 28.0;
    let expected = 1.15f64.exp() / (1.15f64.exp() + 1.0 / last - 1.0);
    assert!(
        (f64::from(sigmas[27]) - expected).abs() < 1e-6,
        "{} vs {expected}",
        sigmas[27]
    );
}

#[test]
fn schnell_sigmas_are_the_plain_linspace() {
    let sigmas = flux_sigmas(4, 1024, &SchedulerConfig::flux_schnell()).expect("valid");
    assert_eq!(sigmas, [1.0, 0.75, 0.5, 0.25, 0.0]);
}

#[test]
fn static_shift_follows_the_formula() {
    let cfg = SchedulerConfig {
        shift: 3.0,
        use_dynamic_shifting: false,
        ..SchedulerConfig::default()
    };
    let sigmas = flux_sigmas(2, 1024, &cfg).expect("valid");
    // s = 0.5: 3·0.5 / (1 + 2·0.5) = 0.75.
    assert_eq!(sigmas, [1.0, 0.75, 0.0]);
}

#[test]
fn zero_steps_and_unsupported_schedules_are_errors() {
    assert!(flux_sigmas(0, 1024, &SchedulerConfig::default()).is_err());
    let karras = SchedulerConfig {
        use_karras_sigmas: true,
        ..SchedulerConfig::default()
    };
    assert!(flux_sigmas(4, 1024, &karras).is_err());
}

#[test]
fn config_reads_diffusers_json_and_ignores_unknown_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scheduler_config.json");
    std::fs::write(
        &path,
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
            "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
            "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
            "use_dynamic_shifting": true}"#,
    )
    .expect("write");
    assert_eq!(
        SchedulerConfig::from_file(&path).expect("parses"),
        SchedulerConfig::default()
    );

    std::fs::write(&path, r#"{"shift": 1.0}"#).expect("write");
    let sparse = SchedulerConfig::from_file(&path).expect("parses");
    assert!(
        !sparse.use_dynamic_shifting,
        "absent keys take diffusers' constructor defaults"
    );

    std::fs::write(&path, r#"{"use_beta_sigmas": true}"#).expect("write");
    assert!(matches!(
        SchedulerConfig::from_file(&path),
        Err(FluxError::Config { .. })
    ));
    std::fs::write(&path, r#"{"shift": "three"}"#).expect("write");
    assert!(matches!(
        SchedulerConfig::from_file(&path),
        Err(FluxError::Config { .. })
    ));
    assert!(matches!(
        SchedulerConfig::from_file(dir.path().join("missing.json")),
        Err(FluxError::Io { .. })
    ));
}

#[test]
fn transformer_timestep_round_trips_through_the_thousandfold_scale() {
    let cfg = SchedulerConfig::default();
    assert_eq!(transformer_timestep(1.0, &cfg), 1.0);
    assert_eq!(transformer_timestep(0.5, &cfg), 0.5);
    let sigma = 0.123_456_79f32;
    assert_eq!(transformer_timestep(sigma, &cfg), (sigma * 1000.0) / 1000.0);
}

#[test]
fn euler_step_adds_the_scaled_velocity() {
    let mut latents = Array3::from_elem((1, 2, 3), 1.0f32);
    let velocity = Array3::from_shape_fn((1, 2, 3), |(_, t, f)| (t * 3 + f) as f32);
    euler_step(&mut latents.view_mut(), velocity.view(), 1.0, 0.75).expect("same shape");
    let expected: Vec<f32> = (0..6).map(|i| 1.0 - 0.25 * i as f32).collect();
    assert_eq!(latents.iter().copied().collect::<Vec<_>>(), expected);
}

#[test]
fn euler_step_rounds_the_difference_before_multiplying() {
    // With a fused or reordered computation this would differ in the last bit.
    let (sigma, sigma_next) = (0.9f32, 0.3f32);
    let v = 1.1f32;
    let mut latents = Array3::from_elem((1, 1, 1), 0.7f32);
    euler_step(
        &mut latents.view_mut(),
        Array3::from_elem((1, 1, 1), v).view(),
        sigma,
        sigma_next,
    )
    .expect("same shape");
    let dt = sigma_next - sigma;
    assert_eq!(latents[[0, 0, 0]].to_bits(), (0.7f32 + dt * v).to_bits());
}

#[test]
fn euler_step_rejects_a_velocity_of_another_shape() {
    let mut latents = Array3::<f32>::zeros((1, 4, 64));
    let velocity = Array3::<f32>::zeros((1, 4, 16));
    assert!(matches!(
        euler_step(&mut latents.view_mut(), velocity.view(), 1.0, 0.5),
        Err(FluxError::Shape {
            op: "euler_step",
            ..
        })
    ));
}

#[test]
fn unscale_divides_then_shifts() {
    let mut latents = Array4::from_elem((1, 1, 1, 2), 0.3611f32);
    unscale_latents(&mut latents.view_mut(), 0.3611, 0.1159);
    assert!(latents.iter().all(|&v| v == 1.0f32 + 0.1159f32));
}
