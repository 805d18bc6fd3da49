//! ONNX model writing: protobuf messages, the graph builder and the shared layer helpers.

pub mod graph;
pub mod ops;
pub mod proto;
pub mod quant;
mod store;
mod types;

pub use graph::{Attr, DATA_FILE, Dim, Elem, GraphBuilder, Value, WeightsReport};
pub use store::initializer_bytes;
