"""Writes `transformer_mixed_precision.onnx`: the tiny dev transformer behind float16 and bfloat16
ports, for the boundary-conversion test (tests/it/mixed_precision.rs). Inside, every input is cast to
float32, the original graph runs, and the velocity is cast to bfloat16 on the way out; the port
types mix float16 and bfloat16 so both conversions are exercised in both directions.

Run from this directory with a Python that has `onnx` (e.g. /work/venvs/tinyflux/bin/python):
    python make_mixed_precision_transformer.py
"""

import onnx
from onnx import TensorProto, helper

SOURCE = "../../../../fixtures/tiny-flux-dev/transformer.opt/fp32/model.onnx"
PORT_TYPES = {
    "hidden_states": TensorProto.FLOAT16,
    "encoder_hidden_states": TensorProto.BFLOAT16,
    "pooled_projections": TensorProto.FLOAT16,
    "timestep": TensorProto.BFLOAT16,
    "img_ids": TensorProto.FLOAT16,
    "txt_ids": TensorProto.BFLOAT16,
    "guidance": TensorProto.FLOAT16,
}
OUTPUT_TYPE = TensorProto.BFLOAT16

model = onnx.load(SOURCE)
graph = model.graph
casts = []
for port in graph.input:
    original = port.name
    inner = original + "_f32"
    for node in graph.node:
        node.input[:] = [inner if name == original else name for name in node.input]
    casts.append(helper.make_node("Cast", [original], [inner], to=TensorProto.FLOAT, name="cast_" + original))
    port.type.tensor_type.elem_type = PORT_TYPES[original]
(output,) = graph.output
inner_output = output.name + "_f32"
for node in graph.node:
    node.output[:] = [inner_output if name == output.name else name for name in node.output]
graph.node.extend([helper.make_node("Cast", [inner_output], [output.name], to=OUTPUT_TYPE, name="cast_latent")])
output.type.tensor_type.elem_type = OUTPUT_TYPE
for index, cast in enumerate(casts):
    graph.node.insert(index, cast)
model.ir_version = min(model.ir_version, 10)
onnx.checker.check_model(model)
onnx.save(model, "transformer_mixed_precision.onnx")
