#!/usr/bin/env python3
"""Generate the flux-rs test fixtures: tiny FLUX.1 models (ONNX), tokenizers and diffusers references.

Everything is built from fixed seeds on the CPU with no download of any kind.  See README.md.

    python generate.py                 # (re)write fixtures/ in the repository
    python generate.py --check         # regenerate into a temp dir and compare bit for bit
    python generate.py --medium        # a 50-150 M parameter dev model outside git, for benchmarks
    python generate.py --real-width    # FLUX.1-dev's widths, 1+1 blocks, bf16 safetensors, outside git
"""

from __future__ import annotations

import argparse
import filecmp
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import formats  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "fixtures"
DEFAULT_MEDIUM_OUT = REPO / ".cache" / "models" / "medium-flux-dev"
DEFAULT_REAL_WIDTH_OUT = REPO / ".cache" / "models" / "real-width-dev"

# Determinism: one thread, deterministic kernels.  Reference numbers must not depend on the machine's
# core count (reduction order changes the last bits).
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def save_npy(path: Path, array) -> None:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_pickle=False keeps the files plain .npy v1.0 that ndarray-npy reads.
    np.save(path, array, allow_pickle=False)


# --------------------------------------------------------------------------------------------------
# Stage 1: raw torch.randn references (the RNG port's truth)
# --------------------------------------------------------------------------------------------------

RANDN_SEEDS = [0, 1, 42, 2**31, 4294967295]
RANDN_SMALL_SHAPES = [[1], [3], [15], [16], [17], [31], [2, 3, 5], [1, 16, 8, 8], [2, 16, 12, 20]]
# Large shapes cost 1 MiB each, so only a few seed/shape pairs.
RANDN_LARGE = [(4294967295, [1, 16, 128, 128]), (42, [4, 16, 64, 64])]


def gen_randn(out: Path) -> None:
    root = out / "reference" / "randn"
    entries = []
    pairs = [(s, shape) for s in RANDN_SEEDS for shape in RANDN_SMALL_SHAPES] + RANDN_LARGE
    for seed, shape in pairs:
        generator = torch.Generator("cpu").manual_seed(seed)
        sample = torch.randn(shape, generator=generator, dtype=torch.float32)
        name = f"seed{seed}_{'x'.join(str(d) for d in shape)}.npy"
        save_npy(root / name, sample)
        entries.append({"seed": seed, "shape": shape, "file": name})
    write_json(
        root / "index.json",
        {
            "description": "torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed), "
            "dtype=torch.float32), one fresh generator per entry",
            "torch_version": torch.__version__,
            "entries": entries,
        },
    )


# --------------------------------------------------------------------------------------------------
# Stage 2: tokenizers, trained locally in the real on-disk formats
# --------------------------------------------------------------------------------------------------

# Training text for both tokenizers: ordinary English prompt language, so that ordinary prompts split
# into several tokens each.  "café" is in it (so é is known); CJK is not (so it hits the unknown paths).
CORPUS = """
A photo of a cat sitting on a wooden table next to a cup of coffee in a small café.
A portrait of an old fisherman with a grey beard, dramatic lighting, highly detailed, 35mm film.
An astronaut riding a horse on the moon, digital art, trending on artstation.
A watercolor painting of a mountain lake at sunrise, soft colors, mist over the water.
A red sports car driving along a coastal road at sunset, cinematic, wide angle.
A bowl of ramen with egg, green onions and pork, studio photograph, shallow depth of field.
A cozy living room with a fireplace, bookshelves, warm light and a sleeping dog on the rug.
A futuristic city skyline at night with neon signs, flying cars and rain on the streets.
A close up of a sunflower in a field, blue sky, bees flying around the petals.
An oil painting of a ship in a storm, huge waves, dark clouds, lightning in the distance.
A little girl in a yellow raincoat jumping in puddles, autumn leaves, city park.
A medieval castle on a hill surrounded by forest, morning fog, fantasy illustration.
A minimalist logo of a fox, flat vector design, orange and white on a black background.
A plate of fresh croissants and a glass of orange juice on a sunny breakfast table.
A black and white photograph of a busy train station, people walking, long exposure.
A robot playing chess with an old man in a quiet library, warm afternoon light.
A snowy village with small houses, smoke from the chimneys, stars in the night sky.
A hyper realistic macro photo of a dew drop on a spider web, green background.
A colorful hot air balloon floating over a valley with rivers and farms below.
A bright kitchen with white tiles, copper pans, herbs on the window and fresh bread.
The quick brown fox jumps over the lazy dog while the cat watches from the window.
Beautiful landscape with green hills, a blue river, tall trees and a small wooden bridge.
A man and a woman walking on the beach at dusk, pink and purple sky, gentle waves.
A cute puppy with big eyes, soft fur, sitting in a basket of flowers, pastel colors.
A detailed pencil sketch of a human hand holding a pen, paper texture, art school study.
A desert with tall sand dunes under a full moon, a camel caravan in the distance.
An underwater scene with coral reef, tropical fish, turtles and sun rays through the water.
A steaming cup of tea and an open book on a rainy day, window with water drops.
A small boat on a calm lake reflecting the mountains, golden hour, peaceful atmosphere.
A vintage poster of a jazz concert, trumpet, saxophone, bold typography, retro style.
A giant tree house in a magical forest, glowing lanterns, fireflies, fairy tale mood.
A street market in the evening with fruit stalls, lamps, and people buying vegetables.
Two cats sleeping together on a sofa, soft blanket, sunlight through the curtains.
A portrait photo of a young woman with curly hair, natural light, bokeh, 85mm lens.
A lighthouse on a rocky coast, stormy sea, seagulls flying, dramatic sky, high contrast.
A bicycle leaning against a brick wall covered with ivy, sunny summer day, old town.
A space station orbiting a blue planet, stars and a distant galaxy, science fiction art.
A chocolate cake with strawberries and cream on a white plate, food photography.
A wolf howling at the moon on a snowy mountain top, night, cold blue tones.
A field of lavender in Provence with a stone farmhouse, sunny afternoon, soft breeze.
"""


def corpus_lines() -> list[str]:
    return [line.strip() for line in CORPUS.strip().splitlines() if line.strip()]


# CLIP's pre-tokenizer pattern and normalisation (CLIPTokenizer: NFC, whitespace runs to one space,
# lowercase; words are letters runs, single digits, or punctuation runs; byte-level alphabet).
CLIP_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_NUM_MERGES = 600


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (same order as CLIP's vocab)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def build_clip_tokenizer(folder: Path) -> None:
    from tokenizers import Regex, normalizers, pre_tokenizers

    byte_chars = list(bytes_to_unicode().values())
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # Plain BPE learning (the `tokenizers` trainer breaks ties between equally frequent pairs in
    # hash order, which is not reproducible): most frequent pair first, ties by the pair itself.
    word_counts: dict[str, int] = {}
    for line in corpus_lines():
        for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            word_counts[piece] = word_counts.get(piece, 0) + 1
    words = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in word_counts}
    merges = []
    while len(merges) < CLIP_NUM_MERGES:
        pair_counts: dict[tuple[str, str], int] = {}
        for w, symbols in words.items():
            for pair in zip(symbols, symbols[1:]):
                pair_counts[pair] = pair_counts.get(pair, 0) + word_counts[w]
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        if pair_counts[best] < 2:
            break
        merges.append(best)
        joined = best[0] + best[1]
        for w, symbols in words.items():
            i, merged = 0, []
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(joined)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[w] = merged

    # CLIP's vocabulary order: 256 byte symbols, the same with "</w>", one entry per merge, then the
    # two specials last (so the EOS id is the largest id, as in the real 49408-token vocabulary).
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [CLIP_BOS, CLIP_EOS]
    vocab = {}
    for tok in tokens:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    assert len(vocab) == len(tokens), "duplicate merge result in CLIP vocabulary"

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "vocab.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = {
        "bos_token": {"content": CLIP_BOS, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
        "eos_token": {"content": CLIP_EOS, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
        "pad_token": CLIP_EOS,
        "unk_token": {"content": CLIP_EOS, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    }
    write_json(folder / "special_tokens_map.json", special)
    bos_id, eos_id = vocab[CLIP_BOS], vocab[CLIP_EOS]
    added = {
        str(i): {"content": c, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False, "special": True}
        for c, i in ((CLIP_BOS, bos_id), (CLIP_EOS, eos_id))
    }
    write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "added_tokens_decoder": added,
            "bos_token": CLIP_BOS,
            "clean_up_tokenization_spaces": True,
            "do_lower_case": True,
            "eos_token": CLIP_EOS,
            "errors": "replace",
            "model_max_length": 77,
            "pad_token": CLIP_EOS,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": CLIP_EOS,
        },
    )


T5_VOCAB_SIZE = 1000
T5_EXTRA_IDS = 100
T5_MAX_LENGTH = 32


def build_t5_tokenizer(folder: Path) -> None:
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines() * 4),
        model_writer=buf,
        model_type="unigram",
        vocab_size=T5_VOCAB_SIZE,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(buf.getvalue())
    # transformers converts a folder holding only spiece.model into the fast (tokenizer.json) form,
    # the same conversion that produced FLUX.1-dev's tokenizer_2/tokenizer.json.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(folder / "spiece.model", Path(tmp) / "spiece.model")
        tokenizer = T5TokenizerFast.from_pretrained(tmp, extra_ids=T5_EXTRA_IDS, legacy=True, model_max_length=512)
    tokenizer.save_pretrained(str(folder))
    assert tokenizer.convert_ids_to_tokens(tokenizer("a photo of a cat").input_ids)[-1] == "</s>"
    assert len(tokenizer("a photo of a cat").input_ids) >= 4, "T5 vocabulary too degenerate"


# --------------------------------------------------------------------------------------------------
# Stage 3: tiny models, ONNX export in the FLUX.1-dev-onnx layout
# --------------------------------------------------------------------------------------------------

CLIP_LENGTH = 77


class Sizes:
    """Model dimensions of one generated model folder."""

    def __init__(self, *, clip_hidden, clip_layers, clip_heads, t5_dim, t5_layers, t5_heads, t5_ff,
                 mm_layers, single_layers, head_dim, heads, axes, vae_channels, vae_layers, text_length):
        self.clip_hidden = clip_hidden
        self.clip_layers = clip_layers
        self.clip_heads = clip_heads
        self.t5_dim = t5_dim
        self.t5_layers = t5_layers
        self.t5_heads = t5_heads
        self.t5_ff = t5_ff
        self.mm_layers = mm_layers
        self.single_layers = single_layers
        self.head_dim = head_dim
        self.heads = heads
        self.axes = axes
        self.vae_channels = vae_channels
        self.vae_layers = vae_layers
        self.text_length = text_length


TINY = Sizes(clip_hidden=48, clip_layers=2, clip_heads=2, t5_dim=32, t5_layers=2, t5_heads=4, t5_ff=64,
             mm_layers=1, single_layers=1, head_dim=16, heads=2, axes=(4, 6, 6),
             vae_channels=(16, 16, 32, 32), vae_layers=1, text_length=T5_MAX_LENGTH)
MEDIUM = Sizes(clip_hidden=256, clip_layers=4, clip_heads=4, t5_dim=256, t5_layers=4, t5_heads=4, t5_ff=512,
               mm_layers=4, single_layers=8, head_dim=64, heads=8, axes=(16, 24, 24),
               vae_channels=(32, 64, 64, 64), vae_layers=1, text_length=128)

VAE_SCALING = 0.3611
VAE_SHIFT = 0.1159


def perturb(module: torch.nn.Module, seed: int, scale: float) -> None:
    """Add seeded noise to every parameter so random-init models are far from degenerate
    (zero biases, unit norms and tiny projections otherwise give almost constant images)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.add_(noise * scale)


def build_clip(sizes: Sizes, vocab_size: int, bos_id: int, eos_id: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=sizes.clip_hidden,
        intermediate_size=sizes.clip_hidden * 2,
        num_hidden_layers=sizes.clip_layers,
        num_attention_heads=sizes.clip_heads,
        max_position_embeddings=CLIP_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=sizes.clip_hidden,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = CLIPTextModel(config)
    perturb(model, seed + 1, 0.02)
    return model.eval()


def build_t5(sizes: Sizes, vocab_size: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=sizes.t5_dim,
        d_kv=sizes.t5_dim // sizes.t5_heads,
        d_ff=sizes.t5_ff,
        num_layers=sizes.t5_layers,
        num_heads=sizes.t5_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        # T5's default dropout stays: eval() must switch it off, and a reference made in train mode
        # shows up as a parity failure instead of hiding.
        dropout_rate=0.1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        is_encoder_decoder=False,
        use_cache=False,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = T5EncoderModel(config)
    perturb(model, seed + 1, 0.02)
    return model.eval()


def build_transformer(sizes: Sizes, guidance: bool, seed: int):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=sizes.mm_layers,
        num_single_layers=sizes.single_layers,
        attention_head_dim=sizes.head_dim,
        num_attention_heads=sizes.heads,
        joint_attention_dim=sizes.t5_dim,
        pooled_projection_dim=sizes.clip_hidden,
        guidance_embeds=guidance,
        axes_dims_rope=sizes.axes,
    )
    perturb(model, seed + 1, 0.02)
    return model.eval()


def build_vae(sizes: Sizes, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(sizes.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(sizes.vae_channels),
        block_out_channels=sizes.vae_channels,
        layers_per_block=sizes.vae_layers,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=VAE_SCALING,
        shift_factor=VAE_SHIFT,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    perturb(model, seed + 1, 0.05)
    return model.eval()


class ClipGraph(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids):
        out = self.clip(input_ids.to(torch.long), output_hidden_states=False)
        return out.last_hidden_state, out.pooler_output


class T5Graph(torch.nn.Module):
    def __init__(self, t5):
        super().__init__()
        self.t5 = t5

    def forward(self, input_ids):
        return self.t5(input_ids.to(torch.long), output_hidden_states=False).last_hidden_state


class TransformerGraph(torch.nn.Module):
    """The official export's interface: timestep is sigma (the model multiplies by 1000 itself, as
    diffusers' transformer does with the pipeline's timestep/1000), guidance is the scale as given."""

    def __init__(self, transformer, guidance: bool):
        super().__init__()
        self.transformer = transformer
        self.guidance = guidance

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                guidance=None):
        return self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance if self.guidance else None,
            return_dict=False,
        )[0]


class VaeGraph(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]


def clean_onnx(model):
    """Drop doc strings and metadata (exporter stack traces with local paths) so files are small and
    reproducible, and check the IR version ONNX Runtime 1.31 reads."""
    import onnx

    def clean_graph(graph):
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean_graph(attr.g)
                for g in attr.graphs:
                    clean_graph(g)
        del graph.metadata_props[:]
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            del vi.metadata_props[:]
            vi.doc_string = ""
        for init in graph.initializer:
            del init.metadata_props[:]
            init.doc_string = ""

    clean_graph(model.graph)
    model.doc_string = ""
    del model.metadata_props[:]
    for fn in model.functions:
        fn.doc_string = ""
        for node in fn.node:
            node.doc_string = ""
            del node.metadata_props[:]
    model.producer_name = "flux-rs tools/tiny-flux"
    model.producer_version = ""
    assert model.ir_version <= 13, f"IR version {model.ir_version} is newer than ONNX Runtime 1.31 reads"
    return model


def save_onnx(model, path: Path, external_data: bool = False) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    model = clean_onnx(model)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        os.chmod(path.parent / (path.name + ".data"), 0o644)
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))


def export_torchscript(module, args, path: Path, input_names, output_names, dynamic_axes, external_data=False):
    import onnx
    import io

    module.eval()
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, opset_version=17, dynamo=False, do_constant_folding=True)
    save_onnx(onnx.load_from_string(buf.getvalue()), path, external_data)
    module.eval()


def fix_output_dims(path: Path, dims: dict) -> None:
    """Write the fixed text length into the text encoders' output shapes (the exporter leaves a
    symbolic name there although the input length is fixed)."""
    import onnx

    model = onnx.load(str(path))
    for output in model.graph.output:
        for axis, value in dims.get(output.name, {}).items():
            dim = output.type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_value = value
    save_onnx(model, path)


def export_dynamo(module, args, path: Path, input_names, output_names, dynamic_shapes, external_data=False):
    module.eval()
    program = torch.onnx.export(module, args, None, input_names=input_names, output_names=output_names,
                                dynamic_shapes=dynamic_shapes, opset_version=18, dynamo=True,
                                optimize=True, external_data=False)
    save_onnx(program.model_proto, path, external_data)
    module.eval()


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_graph(path: Path, module, feeds: dict, tolerance: float = 1e-5) -> float:
    """Run the ONNX graph and the torch module on the same inputs; fail past the tolerance."""
    session = ort_session(path)
    outputs = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        expected = module(*feeds.values())
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    worst, magnitude = 0.0, 0.0
    for got, want in zip(outputs, expected):
        assert got.shape == tuple(want.shape), f"{path}: shape {got.shape} != {tuple(want.shape)}"
        worst = max(worst, float(np.max(np.abs(got - want.numpy()))))
        magnitude = max(magnitude, float(want.abs().max()))
    print(f"  {path.relative_to(path.parents[2] if 'fp32' in path.parts else path.parents[1])}: "
          f"ONNX vs torch max abs diff {worst:.2e} (largest output {magnitude:.2f})")
    # float32 rounding grows with the values' size: the bound is 1e-5 for outputs up to 1 in size,
    # and 1e-5 of the largest output above that.
    bound = tolerance * max(1.0, magnitude)
    assert worst <= bound, f"{path}: ONNX vs torch max abs diff {worst} > {bound}"
    return worst


def make_img_ids(h2: int, w2: int) -> torch.Tensor:
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3)


def export_models(folder: Path, models: dict, sizes: Sizes, guidance: bool, id_dtype, external_data=False,
                  tolerance=1e-5) -> None:
    """Write clip.opt, t5.opt, transformer.opt/fp32 and vae.opt, each checked against torch."""
    from torch.export import Dim

    g = torch.Generator("cpu").manual_seed(1234)
    batch = 2  # tracing with batch 1 would specialise the batch axis to 1
    length = sizes.text_length

    def ids(vocab, shape):
        return torch.randint(0, vocab, shape, generator=g).to(id_dtype)

    clip = ClipGraph(models["clip"]).eval()
    clip_ids = ids(models["clip"].config.vocab_size, (batch, CLIP_LENGTH))
    path = folder / "clip.opt" / "model.onnx"
    export_torchscript(clip, (clip_ids,), path, ["input_ids"], ["text_embeddings", "pooled_embeddings"],
                       {"input_ids": {0: "B"}, "text_embeddings": {0: "B"}, "pooled_embeddings": {0: "B"}})
    fix_output_dims(path, {"text_embeddings": {1: CLIP_LENGTH}})
    check_graph(path, clip, {"input_ids": ids(models["clip"].config.vocab_size, (3, CLIP_LENGTH))})

    t5 = T5Graph(models["t5"]).eval()
    path = folder / "t5.opt" / "model.onnx"
    export_torchscript(t5, (ids(models["t5"].config.vocab_size, (batch, length)),), path, ["input_ids"],
                       ["text_embeddings"], {"input_ids": {0: "B"}, "text_embeddings": {0: "B"}})
    fix_output_dims(path, {"text_embeddings": {1: length}})
    check_graph(path, t5, {"input_ids": ids(models["t5"].config.vocab_size, (3, length))})

    transformer = TransformerGraph(models["transformer"], guidance).eval()
    names = ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids"]

    def transformer_feeds(b, h2, w2):
        feeds = {
            "hidden_states": torch.randn(b, h2 * w2, 64, generator=g),
            "encoder_hidden_states": torch.randn(b, length, sizes.t5_dim, generator=g),
            "pooled_projections": torch.randn(b, sizes.clip_hidden, generator=g),
            "timestep": torch.rand(b, generator=g),
            "img_ids": make_img_ids(h2, w2),
            "txt_ids": torch.zeros(length, 3),
        }
        if guidance:
            feeds["guidance"] = torch.rand(b, generator=g) * 10
        return feeds

    batch_dim, token_dim = Dim("B", min=1, max=64), Dim("S", min=1, max=65536)
    shapes = {
        "hidden_states": {0: batch_dim, 1: token_dim},
        "encoder_hidden_states": {0: batch_dim},
        "pooled_projections": {0: batch_dim},
        "timestep": {0: batch_dim},
        "img_ids": {0: token_dim},
        "txt_ids": {},
    }
    if guidance:
        names.append("guidance")
        shapes["guidance"] = {0: batch_dim}
    path = folder / "transformer.opt" / "fp32" / "model.onnx"
    export_dynamo(transformer, tuple(transformer_feeds(batch, 4, 6).values()), path, names, ["latent"], shapes,
                  external_data)
    check_graph(path, transformer, transformer_feeds(3, 5, 3), tolerance)
    check_graph(path, transformer, transformer_feeds(1, 4, 4), tolerance)

    vae = VaeGraph(models["vae"]).eval()
    path = folder / "vae.opt" / "model.onnx"
    vb, vh, vw = Dim("B", min=1, max=64), Dim("h", min=1, max=1024), Dim("w", min=1, max=1024)
    export_dynamo(vae, (torch.randn(batch, 16, 8, 12, generator=g),), path, ["latent"], ["images"],
                  {"latent": {0: vb, 2: vh, 3: vw}})
    check_graph(path, vae, {"latent": torch.randn(3, 16, 6, 10, generator=g)}, tolerance)
    check_graph(path, vae, {"latent": torch.randn(1, 16, 8, 8, generator=g)}, tolerance)
    for m in models.values():
        m.eval()


def scheduler_config(dev: bool) -> dict:
    return {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.30.0.dev0",
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0 if dev else 1.0,
        "use_dynamic_shifting": dev,
    }


# --------------------------------------------------------------------------------------------------
# Stage 4: model folders and diffusers references
# --------------------------------------------------------------------------------------------------

SEED_CLIP, SEED_T5, SEED_VAE, SEED_DEV, SEED_SCHNELL, SEED_SAFETY = 101, 202, 303, 404, 505, 606


def build_model_folder(folder: Path, dev: bool, sizes: Sizes, id_dtype, external_data=False, seed_offset=0):
    """Tokenizers, the four ONNX graphs and the scheduler config; returns the torch modules and tokenizers."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    build_clip_tokenizer(folder / "tokenizer")
    build_t5_tokenizer(folder / "tokenizer_2")
    clip_tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    t5_tok = T5TokenizerFast.from_pretrained(str(folder / "tokenizer_2"))
    write_json(
        folder / "tokenizer_2" / "special_tokens_map.json",
        {
            "additional_special_tokens": [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)],
            "eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
            "pad_token": {"content": "<pad>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
            "unk_token": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        },
    )
    assert (clip_tok.pad_token_id, t5_tok.pad_token_id, t5_tok.eos_token_id, t5_tok.unk_token_id) == (
        clip_tok.eos_token_id, 0, 1, 2)
    models = {
        "clip": build_clip(sizes, len(clip_tok), clip_tok.bos_token_id, clip_tok.eos_token_id, SEED_CLIP + seed_offset),
        "t5": build_t5(sizes, len(t5_tok), SEED_T5 + seed_offset),
        "transformer": build_transformer(sizes, dev, (SEED_DEV if dev else SEED_SCHNELL) + seed_offset),
        "vae": build_vae(sizes, SEED_VAE + seed_offset),
    }
    # The medium model's 12 blocks accumulate more float32 rounding than the tiny one's two.
    export_models(folder, models, sizes, dev, id_dtype, external_data, 1e-4 if external_data else 1e-5)
    write_json(folder / "scheduler" / "scheduler_config.json", scheduler_config(dev))
    return models, clip_tok, t5_tok


def make_pipeline(folder: Path, models: dict, clip_tok, t5_tok):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler"))
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=models["vae"],
        text_encoder=models["clip"],
        tokenizer=clip_tok,
        text_encoder_2=models["t5"],
        tokenizer_2=t5_tok,
        transformer=models["transformer"],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


LONG_PROMPT = (
    "A very detailed oil painting of an old lighthouse on a rocky coast during a storm, huge waves crashing, "
    "seagulls flying under dark clouds, a small red boat in the distance, warm light from the windows, "
    "dramatic sky, high contrast, trending on artstation"
)

DEV_CASES = [
    dict(name="dev_square_seed42", prompt="A photo of a cat sitting on a wooden table", seed=42, width=64, height=64,
         num_images=1, num_inference_steps=4, guidance_scale=3.5),
    dict(name="dev_wide_batch3_cfg7.5", prompt="A watercolor painting of a mountain lake at sunrise", seed=0,
         width=128, height=64, num_images=3, num_inference_steps=4, guidance_scale=7.5),
    dict(name="dev_tall_one_step", prompt="An astronaut riding a horse on the moon", seed=4294967295, width=64,
         height=96, num_images=1, num_inference_steps=1, guidance_scale=1.0),
    dict(name="dev_long_prompt_truncated", prompt=LONG_PROMPT, seed=1, width=80, height=48, num_images=1,
         num_inference_steps=6, guidance_scale=7.5),
    dict(name="dev_non_ascii_batch2", prompt="Café crème, naïve 東京", seed=2**31, width=64, height=64, num_images=2,
         num_inference_steps=4, guidance_scale=1.0),
]

SCHNELL_CASES = [
    dict(name="schnell_square", prompt="A red sports car driving along a coastal road at sunset", seed=7, width=64,
         height=64, num_images=1, num_inference_steps=4, guidance_scale=1.0),
    dict(name="schnell_wide_batch3", prompt="Two cats sleeping together on a sofa", seed=12345, width=96, height=64,
         num_images=3, num_inference_steps=2, guidance_scale=1.0),
]


def flux_sigmas(steps: int, image_seq_len: int, shifted: bool) -> np.ndarray:
    """The schedule exactly as diffusers computes it (README, "Scheduler"): float64 linspace cast to
    float32, mu in float64, the shift in float32 arithmetic with e^mu rounded to float32, final 0."""
    import math

    sigmas = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
    if shifted:
        slope = (1.15 - 0.5) / (4096 - 256)
        mu = image_seq_len * slope + (0.5 - slope * 256)
        e_mu = np.float32(math.exp(mu))
        sigmas = e_mu / (e_mu + (np.float32(1.0) / sigmas - np.float32(1.0)))
    return np.append(sigmas, np.float32(0.0)).astype(np.float32)


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(latents: np.ndarray, h: int, w: int) -> np.ndarray:
    b, _, c4 = latents.shape
    return latents.reshape(b, h // 2, w // 2, c4 // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def render_case(pipe, case: dict, case_dir: Path, model_name: str) -> dict:
    """Run diffusers' FluxPipeline for one case and write every intermediate the port must reproduce."""
    captured = {}
    original_encode = pipe.encode_prompt
    original_prepare = pipe.prepare_latents

    def encode_prompt(*args, **kwargs):
        result = original_encode(*args, **kwargs)
        captured["encoded"] = result
        return result

    def prepare_latents(*args, **kwargs):
        result = original_prepare(*args, **kwargs)
        captured["initial"] = result[0].clone()
        return result

    def on_step_end(_pipe, step, timestep, kwargs):
        captured["latents"] = kwargs["latents"].clone()
        captured["steps"] = step + 1
        return {}

    pipe.encode_prompt = encode_prompt
    pipe.prepare_latents = prepare_latents
    for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.transformer, pipe.vae):
        module.eval()
    try:
        with torch.no_grad():
            output = pipe(
                prompt=case["prompt"],
                height=case["height"],
                width=case["width"],
                num_inference_steps=case["num_inference_steps"],
                guidance_scale=case["guidance_scale"],
                num_images_per_prompt=case["num_images"],
                generator=torch.Generator("cpu").manual_seed(case["seed"]),
                max_sequence_length=T5_MAX_LENGTH,
                output_type="pil",
                callback_on_step_end=on_step_end,
            )
    finally:
        del pipe.encode_prompt
        del pipe.prepare_latents
    assert captured["steps"] == case["num_inference_steps"]
    for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.transformer, pipe.vae):
        assert not module.training

    # Token ids exactly as the pipeline's _get_clip/_get_t5_prompt_embeds make them.
    clip_ids = pipe.tokenizer(case["prompt"], padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                              return_tensors="pt").input_ids
    t5_ids = pipe.tokenizer_2(case["prompt"], padding="max_length", max_length=T5_MAX_LENGTH, truncation=True,
                              return_tensors="pt").input_ids
    # The raw tokenizer.json, read by the `tokenizers` library alone (what a port loads), must agree.
    from tokenizers import Tokenizer

    raw_t5 = Tokenizer.from_file(str(Path(pipe.tokenizer_2.name_or_path) / "tokenizer.json"))
    raw_ids = raw_t5.encode(case["prompt"]).ids
    raw_ids = raw_ids[: T5_MAX_LENGTH - 1] + [1] if len(raw_ids) > T5_MAX_LENGTH else raw_ids
    raw_ids = raw_ids + [0] * (T5_MAX_LENGTH - len(raw_ids))
    assert raw_ids == t5_ids[0].tolist(), f"tokenizer.json disagrees with T5TokenizerFast: {raw_ids}"
    prompt_embeds, pooled, _ = captured["encoded"]
    n = case["num_images"]
    with torch.no_grad():
        own_pooled = pipe.text_encoder(clip_ids).pooler_output
        own_embeds = pipe.text_encoder_2(t5_ids).last_hidden_state
    assert torch.equal(own_pooled.expand(n, -1), pooled), "CLIP ids differ from what the pipeline encoded"
    assert torch.equal(own_embeds.expand(n, -1, -1), prompt_embeds), "T5 ids differ from what the pipeline encoded"

    h8, w8 = case["height"] // 8, case["width"] // 8
    noise = torch.randn((n, 16, h8, w8), generator=torch.Generator("cpu").manual_seed(case["seed"]),
                        dtype=torch.float32)
    assert torch.equal(pack(noise), captured["initial"]), "noise differs from the pipeline's initial latents"
    sigmas = pipe.scheduler.sigmas.to(torch.float32)
    assert sigmas.shape == (case["num_inference_steps"] + 1,) and float(sigmas[-1]) == 0.0
    expected_sigmas = flux_sigmas(case["num_inference_steps"], (h8 // 2) * (w8 // 2), model_name == "dev")
    assert np.array_equal(sigmas.numpy(), expected_sigmas), "the documented sigma arithmetic no longer holds"

    case_dir.mkdir(parents=True, exist_ok=True)
    write_json(case_dir / "case.json", {
        "model": model_name,
        "prompt": case["prompt"],
        "seed": case["seed"],
        "width": case["width"],
        "height": case["height"],
        "num_images": n,
        "num_inference_steps": case["num_inference_steps"],
        "guidance_scale": case["guidance_scale"],
        "max_sequence_length": T5_MAX_LENGTH,
        "image_seq_len": (h8 // 2) * (w8 // 2),
    })
    save_npy(case_dir / "clip_ids.npy", clip_ids[0].to(torch.int64))
    save_npy(case_dir / "t5_ids.npy", t5_ids[0].to(torch.int64))
    save_npy(case_dir / "pooled.npy", own_pooled)
    save_npy(case_dir / "text_embeddings.npy", own_embeds)
    save_npy(case_dir / "noise.npy", noise)
    save_npy(case_dir / "sigmas.npy", sigmas)
    save_npy(case_dir / "final_latents.npy", captured["latents"])
    images = output.images
    assert len(images) == n
    for i, image in enumerate(images):
        assert image.size == (case["width"], case["height"]) and image.mode == "RGB"
        image.save(case_dir / f"image_{i}.png", format="PNG")
    pixels = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    print(f"  case {case['name']}: pixel mean {pixels.mean():.1f} std {pixels.std():.1f}, "
          f"final latent std {float(captured['latents'].std()):.3f}")
    assert pixels.std() > 25.0, f"{case['name']}: images nearly constant (std {pixels.std():.1f})"
    return {"name": case["name"], "model": model_name}


def replay_with_onnx(folder: Path, case_dir: Path, id_dtype, dev: bool) -> None:
    """Recompute a case from its saved inputs with ONNX Runtime, as flux-core will, and compare: this
    proves the committed graphs and references agree (token ids are taken from the references)."""
    from PIL import Image

    case = json.loads((case_dir / "case.json").read_text(encoding="utf-8"))
    clip = ort_session(folder / "clip.opt" / "model.onnx")
    t5 = ort_session(folder / "t5.opt" / "model.onnx")
    transformer = ort_session(folder / "transformer.opt" / "fp32" / "model.onnx")
    vae = ort_session(folder / "vae.opt" / "model.onnx")
    np_ids = np.int32 if id_dtype == torch.int32 else np.int64
    clip_ids = np.load(case_dir / "clip_ids.npy")[None].astype(np_ids)
    t5_ids = np.load(case_dir / "t5_ids.npy")[None].astype(np_ids)
    _, pooled = clip.run(None, {"input_ids": clip_ids})
    (embeds,) = t5.run(None, {"input_ids": t5_ids})
    diffs = {
        "pooled": np.abs(pooled - np.load(case_dir / "pooled.npy")).max(),
        "text_embeddings": np.abs(embeds - np.load(case_dir / "text_embeddings.npy")).max(),
    }
    n, h8, w8 = case["num_images"], case["height"] // 8, case["width"] // 8
    noise = np.load(case_dir / "noise.npy")
    latents = pack(torch.from_numpy(noise)).numpy()
    sigmas = np.load(case_dir / "sigmas.npy")
    feeds = {
        "encoder_hidden_states": np.repeat(embeds, n, axis=0),
        "pooled_projections": np.repeat(pooled, n, axis=0),
        "img_ids": make_img_ids(h8 // 2, w8 // 2).numpy(),
        "txt_ids": np.zeros((T5_MAX_LENGTH, 3), np.float32),
    }
    if dev:
        feeds["guidance"] = np.full((n,), case["guidance_scale"], np.float32)
    for i in range(case["num_inference_steps"]):
        feeds["hidden_states"] = latents
        feeds["timestep"] = np.full((n,), sigmas[i], np.float32)
        (velocity,) = transformer.run(None, feeds)
        latents = (latents + (sigmas[i + 1] - sigmas[i]) * velocity).astype(np.float32)
    diffs["final_latents"] = np.abs(latents - np.load(case_dir / "final_latents.npy")).max()
    z = unpack(latents, h8, w8) / np.float32(VAE_SCALING) + np.float32(VAE_SHIFT)
    (decoded,) = vae.run(None, {"latent": z.astype(np.float32)})
    pixels = np.round(np.clip(decoded / 2 + 0.5, 0, 1) * 255).astype(np.int32).transpose(0, 2, 3, 1)
    reference = np.stack([np.asarray(Image.open(case_dir / f"image_{i}.png"), dtype=np.int32) for i in range(n)])
    diffs["pixels"] = np.abs(pixels - reference).max()
    print("    onnx replay: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert diffs["pooled"] <= 1e-5 and diffs["text_embeddings"] <= 1e-5, diffs
    assert diffs["final_latents"] <= 1e-4, diffs
    assert diffs["pixels"] <= 1, diffs


def safety_pixels(image) -> np.ndarray:
    """The safety classifier's input for one decoded image (README states this exactly)."""
    from PIL import Image

    resized = image.convert("RGB").resize((224, 224), resample=Image.BILINEAR)
    x = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return x.transpose(2, 0, 1)


class SafetyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, kernel_size=8, stride=8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, kernel_size=4, stride=4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(8, 2)

    def forward(self, pixel_values):
        return self.head(self.features(pixel_values))


NSFW_THRESHOLD = 0.85


def build_safety(folder: Path, case_dirs: list[Path]) -> None:
    """A tiny [B,3,224,224] -> [B,2] classifier, calibrated so that about half of the dev reference
    images score above the 0.85 threshold and half below (both branches get exercised)."""
    from PIL import Image

    torch.manual_seed(SEED_SAFETY)
    net = SafetyNet().eval()
    images = [Image.open(p) for d in case_dirs for p in sorted(d.glob("image_*.png"))]
    batch = torch.from_numpy(np.stack([safety_pixels(im) for im in images]))
    with torch.no_grad():
        feats = net.features(batch)
        direction = net.head.weight[1] - net.head.weight[0]
        raw = feats @ direction
        spread = float(raw.std())
        scale = 4.0 / spread if spread > 0 else 1.0
        net.head.weight.mul_(scale)
        d = torch.sort(feats @ (net.head.weight[1] - net.head.weight[0])).values
        # Threshold in the widest gap that leaves at least two images on each side, so that a
        # port's slightly different resize cannot move an image across it.
        k = max(range(2, len(d) - 1), key=lambda i: float(d[i] - d[i - 1]))
        middle = float(d[k - 1] + d[k]) / 2
        assert float(d[k] - d[k - 1]) > 0.5, "safety calibration: no clear gap around the threshold"
        target = float(np.log(NSFW_THRESHOLD / (1 - NSFW_THRESHOLD)))
        net.head.bias.copy_(torch.tensor([0.0, target - middle]))
    path = folder / "safety_checker" / "model.onnx"
    export_torchscript(net, (batch[:2],), path, ["pixel_values"], ["logits"],
                       {"pixel_values": {0: "B"}, "logits": {0: "B"}})
    check_graph(path, net, {"pixel_values": batch[:3]})

    session = ort_session(path)
    for case_dir in case_dirs:
        pngs = sorted(case_dir.glob("image_*.png"), key=lambda p: int(p.stem.split("_")[1]))
        pixel_values = np.stack([safety_pixels(Image.open(p)) for p in pngs])
        (logits,) = session.run(None, {"pixel_values": pixel_values})
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        save_npy(case_dir / "nsfw_probs.npy", probs[:, 1].astype(np.float32))
        print(f"  {case_dir.name}: nsfw probs {np.round(probs[:, 1], 3).tolist()}")


def gen_variant(out: Path, dev: bool) -> list[dict]:
    name = "dev" if dev else "schnell"
    folder = out / f"tiny-flux-{name}"
    if folder.exists():
        shutil.rmtree(folder)
    id_dtype = torch.int32 if dev else torch.int64
    print(f"building tiny-flux-{name}")
    models, clip_tok, t5_tok = build_model_folder(folder, dev, TINY, id_dtype)
    pipe = make_pipeline(folder, models, clip_tok, t5_tok)
    cases_root = out / "reference" / "cases"
    entries, case_dirs = [], []
    for case in DEV_CASES if dev else SCHNELL_CASES:
        case_dir = cases_root / case["name"]
        if case_dir.exists():
            shutil.rmtree(case_dir)
        entries.append(render_case(pipe, case, case_dir, name))
        replay_with_onnx(folder, case_dir, id_dtype, dev)
        case_dirs.append(case_dir)
    if dev:
        build_safety(folder, case_dirs)
    # The other formats come last, from the same modules, so nothing above changes.
    builder_entries = formats.gen_formats(out, dev, folder, models, render_case,
                                          (DEV_CASES if dev else SCHNELL_CASES)[0])
    return entries, builder_entries


def write_case_index(out: Path, entries: list[dict]) -> None:
    root = out / "reference" / "cases"
    index = {
        "description": "diffusers FluxPipeline references (float32, CPU, torch.Generator('cpu').manual_seed(seed), "
                       "max_sequence_length 32); see tools/tiny-flux/README.md for every file",
        "model_folders": {"dev": "tiny-flux-dev", "schnell": "tiny-flux-schnell"},
        "cases": [],
    }
    for entry in entries:
        case_dir = root / entry["name"]
        files = sorted(p.name for p in case_dir.iterdir() if p.is_file())
        index["cases"].append({"name": entry["name"], "model": entry["model"], "files": files})
    write_json(root / "index.json", index)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

STAGES = ["randn", "dev", "schnell"]


def generate(out: Path, stages: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if "randn" in stages:
        gen_randn(out)
    entries, builder_entries = [], []
    for stage, dev in (("dev", True), ("schnell", False)):
        if stage in stages:
            cases, builder_cases = gen_variant(out, dev=dev)
            entries += cases
            builder_entries += builder_cases
    if builder_entries:
        formats.write_builder_index(out, builder_entries)
    if entries:
        existing = out / "reference" / "cases" / "index.json"
        if existing.exists():
            kept = [c for c in json.loads(existing.read_text(encoding="utf-8"))["cases"]
                    if c["name"] not in {e["name"] for e in entries}]
            entries = [{"name": c["name"], "model": c["model"]} for c in kept] + entries
        order = [c["name"] for c in DEV_CASES + SCHNELL_CASES]
        entries.sort(key=lambda e: order.index(e["name"]))
        write_case_index(out, entries)
    write_file_index(out)


def write_file_index(out: Path) -> None:
    """fixtures/index.json: every fixture file with its size, so a loader test notices a missing or
    truncated file."""
    files = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p != out / "index.json"
    )
    write_json(out / "index.json", {
        "description": "every fixture file (path relative to fixtures/, size in bytes); written by "
                       "tools/tiny-flux/generate.py",
        "files": [{"path": f, "bytes": (out / f).stat().st_size} for f in files],
    })


def gen_medium(folder: Path) -> None:
    """The same architecture at benchmark size, transformer weights in external data (like the
    official export); no references."""
    if folder.exists():
        shutil.rmtree(folder)
    print(f"building the medium model in {folder}")
    models, _, _ = build_model_folder(folder, True, MEDIUM, torch.int32, external_data=True, seed_offset=1000)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    counts["vae_decoder"] = sum(p.numel() for p in models["vae"].decoder.parameters())
    print("  parameters: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in counts.items()))
    write_json(folder / "parameters.json", counts)
    # The same weights as a diffusers folder (beside it), for what runs through the model builder's
    # graphs: the bench's peak memory per request size (issue 18).
    diffusers_dir = folder.with_name(folder.name + "-diffusers")
    formats.write_diffusers(folder, diffusers_dir, models)
    write_json(diffusers_dir / "flux-rs-model.json", {"text_length": MEDIUM.text_length})
    print(f"  diffusers folder: {diffusers_dir}")
    # The classifier only sees 224x224 images, so the tiny one serves the medium model too.
    safety = DEFAULT_OUT / "tiny-flux-dev" / "safety_checker" / "model.onnx"
    if safety.is_file():
        (folder / "safety_checker").mkdir(parents=True, exist_ok=True)
        shutil.copy(safety, folder / "safety_checker" / "model.onnx")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixtures folder to write")
    parser.add_argument("--only", action="append", choices=STAGES, help="run only these stages (repeatable)")
    parser.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with --out")
    parser.add_argument("--medium", action="store_true", help="build only the 50-150 M parameter model")
    parser.add_argument("--medium-out", type=Path, default=DEFAULT_MEDIUM_OUT, help="where --medium writes")
    parser.add_argument("--real-width", action="store_true",
                        help="build only the FLUX.1-dev-width model (bf16 diffusers folder, BFL files, a reference)")
    parser.add_argument("--real-width-out", type=Path, default=DEFAULT_REAL_WIDTH_OUT, help="where --real-width writes")
    args = parser.parse_args()
    if args.medium:
        gen_medium(args.medium_out)
        return 0
    if args.real_width:
        print(f"building the real-width model in {args.real_width_out}")
        formats.gen_real_width(args.real_width_out, DEFAULT_OUT / "tiny-flux-dev", perturb)
        return 0
    stages = args.only or STAGES
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp), stages)
            return compare_trees(Path(tmp), args.out, every_stage=stages == STAGES)
    generate(args.out, stages)
    return 0


def compare_trees(fresh: Path, committed: Path, every_stage: bool) -> int:
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    problems = []
    if every_stage:
        stale = sorted(set(p.relative_to(committed) for p in committed.rglob("*") if p.is_file()) - set(fresh_files))
        problems += [f"not generated any more: {rel}" for rel in stale]
    for rel in fresh_files:
        if not every_stage and rel == Path("index.json"):
            continue  # a partial run indexes only its own files
        other = committed / rel
        if not other.is_file():
            problems.append(f"missing in {committed}: {rel}")
        elif not filecmp.cmp(fresh / rel, other, shallow=False):
            problems.append(f"differs: {rel}")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"checked {len(fresh_files)} files: {'OK, bit-identical' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
