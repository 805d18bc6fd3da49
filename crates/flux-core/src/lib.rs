//! The FLUX.1 text-to-image pipeline on ONNX Runtime: tokenizers, text encoders, flow-matching
//! sampler, VAE decode and image encoding, owned by one engine thread. Synchronous.
