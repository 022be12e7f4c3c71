"""Quickstart: compress a vision-language model, generate as usual, read what was kept, restore.

Runs on the CPU in seconds with tiny random models of every supported family (no download). With a real
checkpoint the same four calls apply:

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16, device_map="auto")
    processor = AutoProcessor.from_pretrained(path)
    vlmzip.compress(model, policy="vtc-cls:keep=64+fastv:layer=2,keep=0.5+knorm:keep=0.5")
    out = model.generate(**processor(images=image, text=prompt, return_tensors="pt").to(model.device),
                         max_new_tokens=64)
"""

import vlmzip
from vlmzip.eval.tiny import FAMILIES, random_inputs, tiny_model

POLICY = "vtc-cls:keep=0.5+fastv:layer=2,keep=0.5+knorm:keep=0.5"

for family in FAMILIES:
    model = tiny_model(family)  # random weights: the text is noise, the bookkeeping is real
    inputs = random_inputs(model, images_per_sample=[1, 2], text_lengths=[4, 9])  # left-padded batch of 2

    vlmzip.compress(model, POLICY)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print(f"== {family}: generated {out.shape[1] - inputs['input_ids'].shape[1]} tokens per prompt")
    print(vlmzip.stats(model), end="\n\n")
    vlmzip.restore(model)  # the model is exactly as it was
