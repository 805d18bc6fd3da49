import json, sys
from transformers import CLIPTokenizer, T5TokenizerFast
root = sys.argv[1]
clip = CLIPTokenizer.from_pretrained(f"{root}/tokenizer")
t5 = T5TokenizerFast.from_pretrained(f"{root}/tokenizer_2")
prompts = [
    "a", " ", "  a   cat\t\n dog  ", "A CAT", "ＡＢＣ ｃａｔ", "café", "cafe\u0301", "İstanbul ΣΑΣ",
    "a cat 🐱🔥", "猫の写真 a cat", "a\u0000cat\u0007 dog", "a\u00a0cat\u2003dog", "a\u200bcat",
    "<|startoftext|> a cat <|endoftext|>", "<|ENDOFTEXT|> cat", "</s> a <pad> cat <extra_id_0> <unk>",
    "don't it's we're I'LL", "1234 x 5.6", "a " * 300, ("photograph of a cat " * 100).strip(),
    "élan " * 120, "a,b;c!!!d??", "\ufeffa cat", "a\r\ncat",
]
out = []
for p in prompts:
    c = clip(p, padding="max_length", max_length=77, truncation=True).input_ids
    t = t5(p, padding="max_length", max_length=32, truncation=True).input_ids
    out.append({"prompt": p, "clip": c, "t5": t})
json.dump(out, sys.stdout, ensure_ascii=False)
