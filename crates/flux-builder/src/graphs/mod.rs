//! The graph of each FLUX component, written from its config and checkpoint.
