//! The Euler denoising loop, once, over a [`Stepper`]: host latents with any [`VelocityModel`]
//! (so it can be run and tested with a fake model), or the device-resident stepper.

use ndarray::{Array3, ArrayView3};

use crate::sampling::euler_step;
use crate::{FluxError, Result};

/// Predicts the flow velocity of packed latents `(B, S, 64)` at noise level `sigma`.
///
/// The text conditioning, guidance and position ids are the implementor's: it holds them for the
/// whole loop. An ONNX implementor feeds the transformer
/// [`transformer_timestep`](crate::sampling::transformer_timestep)`(sigma)`, not `sigma` itself,
/// to match diffusers bit for bit.
pub trait VelocityModel {
    /// The velocity, shaped like `latents`.
    fn velocity(&mut self, latents: ArrayView3<f32>, sigma: f32) -> Result<Array3<f32>>;

    /// The velocity of the last step (the one ending at sigma 0): a model may give back memory it
    /// kept for the next step. The same numbers as [`Self::velocity`].
    fn last_velocity(&mut self, latents: ArrayView3<f32>, sigma: f32) -> Result<Array3<f32>> {
        self.velocity(latents, sigma)
    }
}

/// What the progress callback wants after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    Cancel,
}

/// One denoising step at a time over state the stepper holds: on the host
/// ([`HostStepper`], any [`VelocityModel`]) or in the execution provider's memory (the device
/// stepper). [`run_steps`] is the one loop over either.
pub trait Stepper {
    /// Advances the latents from `sigma` to `sigma_next`: one model call and one Euler update.
    fn step(&mut self, sigma: f32, sigma_next: f32) -> Result<()>;
}

/// The denoising loop: one [`Stepper::step`] per pair of consecutive sigmas.
///
/// After each step `on_step(step, total)` is called with the 1-based step number and the number of
/// steps; answering [`StepControl::Cancel`] stops the loop with [`FluxError::Cancelled`]. Errors
/// when fewer than two sigmas are given or when a step fails.
pub fn run_steps<S: Stepper + ?Sized>(
    stepper: &mut S,
    sigmas: &[f32],
    on_step: &mut dyn FnMut(usize, usize) -> StepControl,
) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(FluxError::InvalidInput {
            param: "sigmas",
            message: format!("a schedule needs at least two sigmas, got {}", sigmas.len()),
        });
    }
    let total = sigmas.len() - 1;
    for (index, pair) in sigmas.windows(2).enumerate() {
        stepper.step(pair[0], pair[1])?;
        if on_step(index + 1, total) == StepControl::Cancel {
            return Err(FluxError::Cancelled);
        }
    }
    Ok(())
}

/// Steps host-resident latents with a [`VelocityModel`] and the Euler update of `sampling`.
#[derive(Debug)]
pub struct HostStepper<'m, M: ?Sized> {
    model: &'m mut M,
    latents: Array3<f32>,
}

impl<'m, M: VelocityModel + ?Sized> HostStepper<'m, M> {
    pub fn new(model: &'m mut M, latents: Array3<f32>) -> Self {
        Self { model, latents }
    }

    /// The latents after the steps taken so far.
    pub fn into_latents(self) -> Array3<f32> {
        self.latents
    }
}

impl<M: VelocityModel + ?Sized> Stepper for HostStepper<'_, M> {
    fn step(&mut self, sigma: f32, sigma_next: f32) -> Result<()> {
        // FLUX schedules end at exactly 0: that step is the last one.
        let velocity = if sigma_next == 0.0 {
            self.model.last_velocity(self.latents.view(), sigma)?
        } else {
            self.model.velocity(self.latents.view(), sigma)?
        };
        euler_step(
            &mut self.latents.view_mut(),
            velocity.view(),
            sigma,
            sigma_next,
        )
    }
}

/// Integrates from `sigmas[0]` to the last sigma on the host with `model` (see [`run_steps`]),
/// and returns the final latents. Errors also when the model's output has another shape than
/// the latents.
pub fn denoise<M: VelocityModel + ?Sized>(
    model: &mut M,
    latents: Array3<f32>,
    sigmas: &[f32],
    on_step: &mut dyn FnMut(usize, usize) -> StepControl,
) -> Result<Array3<f32>> {
    let mut stepper = HostStepper::new(model, latents);
    run_steps(&mut stepper, sigmas, on_step)?;
    Ok(stepper.into_latents())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Velocity `c` everywhere, recording the sigmas it was called with.
    struct ConstantVelocity {
        value: f32,
        seen: Vec<f32>,
    }

    impl VelocityModel for ConstantVelocity {
        fn velocity(&mut self, latents: ArrayView3<f32>, sigma: f32) -> Result<Array3<f32>> {
            self.seen.push(sigma);
            Ok(Array3::from_elem(latents.raw_dim(), self.value))
        }
    }

    /// Velocity `k · x`: the Euler recursion is `x ← x (1 + k·dt)`.
    struct LinearVelocity {
        gain: f32,
    }

    impl VelocityModel for LinearVelocity {
        fn velocity(&mut self, latents: ArrayView3<f32>, _sigma: f32) -> Result<Array3<f32>> {
            Ok(latents.mapv(|x| self.gain * x))
        }
    }

    /// Returns one token too few.
    struct WrongShape;

    impl VelocityModel for WrongShape {
        fn velocity(&mut self, latents: ArrayView3<f32>, _sigma: f32) -> Result<Array3<f32>> {
            let (b, s, f) = latents.dim();
            Ok(Array3::zeros((b, s.saturating_sub(1), f)))
        }
    }

    struct Failing;

    impl VelocityModel for Failing {
        fn velocity(&mut self, _latents: ArrayView3<f32>, _sigma: f32) -> Result<Array3<f32>> {
            Err(FluxError::Engine("model exploded".to_owned()))
        }
    }

    fn keep_going(_: usize, _: usize) -> StepControl {
        StepControl::Continue
    }

    #[test]
    fn constant_velocity_moves_latents_by_velocity_times_total_sigma_drop() {
        // Σ (σ_{i+1} - σ_i) · c telescopes to (σ_N - σ_0) · c = -c when going from 1 to 0.
        let sigmas = [1.0f32, 0.75, 0.5, 0.25, 0.0];
        let mut model = ConstantVelocity {
            value: 2.0,
            seen: Vec::new(),
        };
        let out = denoise(
            &mut model,
            Array3::from_elem((2, 3, 4), 5.0),
            &sigmas,
            &mut keep_going,
        )
        .expect("runs");
        // Every partial sum is exact in binary (multiples of 0.5), so equality is exact.
        assert!(out.iter().all(|&v| v == 3.0), "{out:?}");
        assert_eq!(model.seen, [1.0, 0.75, 0.5, 0.25]);
    }

    #[test]
    fn linear_velocity_follows_the_euler_recursion() {
        let sigmas = [1.0f32, 0.6, 0.2, 0.0];
        let gain = 0.5f32;
        let start = 1.5f32;
        let mut expected = start;
        for pair in sigmas.windows(2) {
            let dt = pair[1] - pair[0];
            expected += dt * (gain * expected);
        }
        let out = denoise(
            &mut LinearVelocity { gain },
            Array3::from_elem((1, 2, 2), start),
            &sigmas,
            &mut keep_going,
        )
        .expect("runs");
        assert!(
            out.iter().all(|&v| v.to_bits() == expected.to_bits()),
            "{out:?} vs {expected}"
        );
        // And the recursion approximates x·e^{k(σ_N - σ_0)} = 1.5·e^{-0.5} ≈ 0.91 loosely.
        assert!((f64::from(expected) - 1.5 * (-0.5f64).exp()).abs() < 0.1);
    }

    #[test]
    fn progress_is_reported_after_every_step() {
        let mut calls = Vec::new();
        let mut record = |step: usize, total: usize| {
            calls.push((step, total));
            StepControl::Continue
        };
        let mut model = ConstantVelocity {
            value: 0.0,
            seen: Vec::new(),
        };
        denoise(
            &mut model,
            Array3::zeros((1, 1, 1)),
            &[1.0, 0.5, 0.0],
            &mut record,
        )
        .expect("runs");
        assert_eq!(calls, [(1, 2), (2, 2)]);
    }

    #[test]
    fn cancelling_after_step_k_stops_before_the_next_model_call() {
        let mut model = ConstantVelocity {
            value: 1.0,
            seen: Vec::new(),
        };
        let mut cancel_after_two = |step: usize, _total: usize| {
            if step == 2 {
                StepControl::Cancel
            } else {
                StepControl::Continue
            }
        };
        let result = denoise(
            &mut model,
            Array3::zeros((1, 1, 1)),
            &[1.0, 0.75, 0.5, 0.25, 0.0],
            &mut cancel_after_two,
        );
        assert!(matches!(result, Err(FluxError::Cancelled)));
        assert_eq!(model.seen.len(), 2);
    }

    #[test]
    fn a_model_output_of_the_wrong_shape_is_an_error() {
        let result = denoise(
            &mut WrongShape,
            Array3::zeros((1, 4, 64)),
            &[1.0, 0.0],
            &mut keep_going,
        );
        assert!(
            matches!(
                result,
                Err(FluxError::Shape {
                    op: "euler_step",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn model_errors_propagate() {
        let result = denoise(
            &mut Failing,
            Array3::zeros((1, 1, 1)),
            &[1.0, 0.0],
            &mut keep_going,
        );
        assert!(matches!(result, Err(FluxError::Engine(_))));
    }

    #[test]
    fn a_schedule_needs_two_sigmas() {
        let mut model = ConstantVelocity {
            value: 1.0,
            seen: Vec::new(),
        };
        for sigmas in [&[][..], &[1.0][..]] {
            let result = denoise(
                &mut model,
                Array3::zeros((1, 1, 1)),
                sigmas,
                &mut keep_going,
            );
            assert!(matches!(
                result,
                Err(FluxError::InvalidInput {
                    param: "sigmas",
                    ..
                })
            ));
        }
        assert!(model.seen.is_empty());
    }

    #[test]
    fn works_through_a_trait_object() {
        let mut model: Box<dyn VelocityModel> = Box::new(ConstantVelocity {
            value: 4.0,
            seen: Vec::new(),
        });
        let out = denoise(
            model.as_mut(),
            Array3::zeros((1, 1, 2)),
            &[1.0, 0.5],
            &mut keep_going,
        )
        .expect("runs");
        assert!(out.iter().all(|&v| v == -2.0));
    }
}
