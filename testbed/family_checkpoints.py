"""Tiny checkpoints of every image-text-to-text family FactLoop covers, built here from
configs: no hub, no download.

Each family's checkpoint is what a lab's real one is, shrunk: the family's own model class
(`AutoModelForImageTextToText` loads it), the family's own processor class built from its
parts (a Pillow image processor: the app's venv has no torchvision, which transformers'
default fast image processors need), and a byte-level BPE tokenizer trained here on the
synthetic world's text (as the tiny LLaVA's is, testbed/tiny.py) with the family's special tokens. The weights are
random: the family matrix (rlhf/family_matrix.py) checks that every code path runs on every
family, not what a tiny random model says.

`build(name, out)` writes one family's checkpoint folder; `FAMILIES` lists them in the
order of the matrix. torch and transformers are imported when a builder runs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.staging import staged
from testbed.tiny import save_pretrained as save_for_vllm

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
VOCAB = 400
TEXT_LAYERS = 2
HIDDEN = 32
MANIFEST = "factloop-family.json"


def chat_template(image: str, *, end: str = EOS) -> str:
    """A USER/ASSISTANT chat template whose image part renders as `image` (the family's
    placeholder, which its processor expands into image tokens)."""
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{% if not loop.first %} {% endif %}USER: "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] in ('image', 'image_url') %}" + image + "{% elif item['type'] == 'text' %}"
        "{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{% elif message['role'] == 'assistant' %} ASSISTANT: "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
        "{% endif %}{% endfor %}{% endif %}" + end + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )


def corpus() -> list[str]:
    """The synthetic world's question/answer text (what the tiny LLaVA's tokenizer learns)."""
    from testbed.tiny import world_corpus
    from testbed.toyworld import sample_scenes

    return world_corpus(sample_scenes(7, 200, prefix="tok"), seed=7)


def tokenizer(
    specials: list[str],
    *,
    named: dict[str, str] | None = None,
    padding_side: str = "left",
    unk: bool = False,
) -> Any:
    """A PreTrainedTokenizerFast over a BPE trained here, with `<pad>`, `<s>`, `</s>` and
    `specials`; `named` sets tokenizer attributes a processor reads (`image_token`...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[PAD, BOS, EOS, *(["<unk>"] if unk else []), *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=named or {},
        **({"unk_token": "<unk>"} if unk else {}),
        padding_side=padding_side,
        model_max_length=2048,
    )


def text_config(tok: Any, **extra: Any) -> dict[str, Any]:
    """A two-layer decoder's settings sized to the tokenizer."""
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": TEXT_LAYERS,
        # One head of 32: vLLM's CPU attention has kernels for head sizes of 32 and up.
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "max_position_embeddings": 2048,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
        **extra,
    }


def vision(**extra: Any) -> dict[str, Any]:
    """A one-layer ViT's settings (CLIP/SigLIP field names)."""
    return {
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        **extra,
    }


def templated(processor: Any, template: str) -> None:
    """Give a processor whose class drops `chat_template` (BLIP-2, InstructBLIP, Chameleon,
    Kosmos-2) its template, on the tokenizer too: the tokenizer saves it, and
    FactLoop's loader (rlhf.common.load_processor) takes it from there."""
    processor.chat_template = template
    processor.tokenizer.chat_template = template


def newlines(tok: Any) -> None:
    """Runs of 1-4 newlines as single tokens, as in Gemma's SentencePiece vocabulary (vLLM's
    Gemma 3 and PaliGemma processors look them up by text)."""
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken("\n" * n, normalized=False, special=False) for n in range(1, 5)])


def _id(tok: Any, token: str) -> int:
    return int(tok.convert_tokens_to_ids(token))


# ---------------------------------------------------------------------------------------
# The families


def llava() -> tuple[Any, Any]:
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tokenizer(["<image>"], named={"image_token": "<image>"})
    size = 32
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tok,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template("<image>\n"),
    )
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **vision(image_size=size, patch_size=16)},
        text_config={"model_type": "llama", **text_config(tok)},
        image_token_index=_id(tok, "<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=4,
    )
    return LlavaForConditionalGeneration(config), processor


def llava_next() -> tuple[Any, Any]:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tok = tokenizer(["<image>"], named={"image_token": "<image>"})
    size, pinpoints = 32, [[32, 32], [32, 64], [64, 32]]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tok,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template("<image>\n"),
    )
    config = LlavaNextConfig(
        vision_config={"model_type": "clip_vision_model", **vision(image_size=size, patch_size=16)},
        text_config={"model_type": "llama", **text_config(tok)},
        image_token_index=_id(tok, "<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return LlavaNextForConditionalGeneration(config), processor


QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen_processor(cls: Any) -> Any:
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

    tok = tokenizer(QWEN_TOKENS, named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    # 56 px images: 4 x 4 patches of 14 px, merged 2 x 2 into 4 image tokens.
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56}, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    # The video processor is required by the class (and needs torchvision); FactLoop sends images only.
    video_processor = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    return cls(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )


def _qwen_ids(tok: Any) -> dict[str, Any]:
    return {
        "image_token_id": _id(tok, "<|image_pad|>"),
        "video_token_id": _id(tok, "<|video_pad|>"),
        "vision_start_token_id": _id(tok, "<|vision_start|>"),
        "vision_end_token_id": _id(tok, "<|vision_end|>"),
    }


def qwen2_vl() -> tuple[Any, Any]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    processor = _qwen_processor(Qwen2VLProcessor)
    tok = processor.tokenizer
    mrope = {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0}
    config = Qwen2VLConfig(
        text_config=text_config(tok, rope_parameters=mrope),
        vision_config={"depth": 1, "embed_dim": HIDDEN, "hidden_size": HIDDEN, "num_heads": 2, "mlp_ratio": 2},
        **_qwen_ids(tok),
    )
    return Qwen2VLForConditionalGeneration(config), processor


def qwen2_5_vl() -> tuple[Any, Any]:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    processor = _qwen_processor(Qwen2_5_VLProcessor)
    tok = processor.tokenizer
    mrope = {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0}
    config = Qwen2_5_VLConfig(
        text_config=text_config(tok, rope_parameters=mrope),
        vision_config={
            "depth": 2,
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "out_hidden_size": HIDDEN,
            "num_heads": 2,
            "fullatt_block_indexes": [1],
            "window_size": 56,
        },
        **_qwen_ids(tok),
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


IDEFICS_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]


def _idefics_parts(processor_cls: Any, image_processor_cls: Any, **extra: Any) -> Any:
    tok = tokenizer(IDEFICS_TOKENS, named={"image_token": "<image>"})
    # 64 px images, 16 px patches, pixel shuffle by 2: 4 image tokens, no splitting.
    image_processor = image_processor_cls(
        do_image_splitting=False, size={"longest_edge": 64}, max_image_size={"longest_edge": 64}
    )
    return processor_cls(
        image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=chat_template("<image>"), **extra
    )


def _idefics_config(cls: Any, tok: Any) -> Any:
    return cls(
        text_config={"model_type": "llama", **text_config(tok)},
        vision_config=vision(image_size=64, patch_size=16),
        scale_factor=2,
        image_token_id=_id(tok, "<image>"),
        pad_token_id=tok.pad_token_id,
    )


def idefics3() -> tuple[Any, Any]:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    processor = _idefics_parts(Idefics3Processor, Idefics3ImageProcessorPil)
    return Idefics3ForConditionalGeneration(_idefics_config(Idefics3Config, processor.tokenizer)), processor


def smolvlm() -> tuple[Any, Any]:
    """SmolVLM's own shape, not Idefics3's: images split into tiles plus a global view (its
    processor's default), each 128 px image read as 8 x 8 patches and pixel-shuffled by 4
    (SmolVLM's scale factor) into 4 image tokens."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    tok = tokenizer(IDEFICS_TOKENS, named={"image_token": "<image>"})
    # Resized to 256 px on the longest edge, then cut into 128 px tiles (2 x 2 for a square
    # image) and a global view: 5 images of 4 tokens each, with SmolVLM's row/column markers.
    image_processor = SmolVLMImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 256}, max_image_size={"longest_edge": 128}
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=4,
        chat_template=chat_template("<image>"),
        video_processor=SmolVLMVideoProcessor(),
    )
    config = SmolVLMConfig(
        text_config={"model_type": "llama", **text_config(tok)},
        vision_config=vision(image_size=128, patch_size=16),
        scale_factor=4,
        image_token_id=_id(tok, "<image>"),
        pad_token_id=tok.pad_token_id,
    )
    return SmolVLMForConditionalGeneration(config), processor


INTERNVL_NAMES = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def internvl() -> tuple[Any, Any]:
    """InternVL3 (its transformers-native format): a Qwen2 decoder, and images cut into 32 px
    tiles plus a thumbnail that its processor returns as one flat list of tiles for the
    whole batch (what a row's share of `pixel_values` must be found from)."""
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    tok = tokenizer(list(INTERNVL_NAMES.values()), named=INTERNVL_NAMES)
    # Up to 4 tiles of 32 px and a thumbnail per image; each tile is 4 x 4 patches of 8 px,
    # pixel-shuffled by 0.5 into 4 image tokens.
    image_processor = GotOcr2ImageProcessorPil(
        crop_to_patches=True, min_patches=1, max_patches=4, size={"height": 32, "width": 32}
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(),
        image_seq_length=4,
        chat_template=chat_template("<IMG_CONTEXT>\n"),
    )
    config = InternVLConfig(
        vision_config=vision(image_size=[32, 32], patch_size=[8, 8]),
        text_config={"model_type": "qwen2", **text_config(tok)},
        image_token_id=_id(tok, "<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    return InternVLForConditionalGeneration(config), processor


def mllama() -> tuple[Any, Any]:
    """Llama 3.2 Vision: images read by cross-attention (a mask of batch x tokens x images x
    tiles runs along the sequence) in 32 px tiles, and a processor that puts the BOS token
    before every text it encodes, a completion's too."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    tok = tokenizer(["<|image|>", "<|python_tag|>"], named={"image_token": "<|image|>"})
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=4),
        tokenizer=tok,
        chat_template=chat_template("<|image|>"),
    )
    config = MllamaConfig(
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
            "max_num_tiles": 4,
            "intermediate_layers_indices": [0],
            "vision_output_dim": 2 * HIDDEN,  # the last layer's features and one intermediate layer's
        },
        # Mllama's cross-attention layers replace self-attention (as every fifth layer of the
        # real model does): one between two self-attention layers, so text still reads text.
        text_config={
            **text_config(tok),
            "num_hidden_layers": 3,
            "cross_attention_layers": [1],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        image_token_index=_id(tok, "<|image|>"),
    )
    return MllamaForConditionalGeneration(config), processor


def gemma3() -> tuple[Any, Any]:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    names = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = tokenizer(list(names.values()), named=names)
    newlines(tok)  # vLLM's Gemma 3 processor looks up runs of newlines by text
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tok,
        image_seq_length=4,
        chat_template=chat_template("<start_of_image>"),
    )
    config = Gemma3Config(
        text_config=text_config(
            tok, head_dim=32, sliding_window=64, layer_types=["sliding_attention", "full_attention"]
        ),
        vision_config={"model_type": "siglip_vision_model", **vision(image_size=32, patch_size=8)},
        mm_tokens_per_image=4,
        boi_token_index=_id(tok, "<start_of_image>"),
        eoi_token_index=_id(tok, "<end_of_image>"),
        image_token_index=_id(tok, "<image_soft_token>"),
    )
    return Gemma3ForConditionalGeneration(config), processor


def paligemma() -> tuple[Any, Any]:
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    tok = tokenizer(["<image>"], named={"image_token": "<image>"})
    newlines(tok)  # vLLM's PaliGemma processor looks up "\n" by text
    image_processor: Any = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 4  # (32 / 16) ** 2 patches
    processor = PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=chat_template("<image>")
    )
    config: Any = PaliGemmaConfig(
        text_config={"model_type": "gemma", **text_config(tok, head_dim=32)},
        vision_config={"model_type": "siglip_vision_model", **vision(image_size=32, patch_size=16)},
        image_token_index=_id(tok, "<image>"),
        projection_dim=HIDDEN,
    )
    config.text_config.num_image_tokens = 4
    return PaliGemmaForConditionalGeneration(config), processor


def _blip_model(config_class: Any, model_class: Any, tok: Any, qformer: dict[str, Any]) -> Any:
    """A BLIP-2-style model: a ViT, a one-layer Q-Former with 4 queries, a Llama decoder."""
    config = config_class(
        vision_config=vision(image_size=32, patch_size=16),
        qformer_config={
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "encoder_hidden_size": HIDDEN,
            **qformer,
        },
        text_config={"model_type": "llama", **text_config(tok)},
        num_query_tokens=4,
        image_token_index=_id(tok, "<image>"),
    )
    return model_class(config)


def blip_2() -> tuple[Any, Any]:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

    # No `image_token` attribute: BLIP-2's processor then registers its own `<image>` (5.19
    # reads `.content` of a named one, which a loaded tokenizer holds as text).
    tok = tokenizer(["<image>"])
    # BLIP-2's processor puts the query tokens' placeholders before the text itself.
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tok,
        num_query_tokens=4,
    )
    templated(processor, chat_template(""))
    return _blip_model(Blip2Config, Blip2ForConditionalGeneration, tok, {"vocab_size": len(tok)}), processor


def instructblip() -> tuple[Any, Any]:
    from transformers import (
        BlipImageProcessorPil,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
    )

    tok = tokenizer(["<image>"])  # see blip_2
    qformer_tok = tokenizer([], padding_side="right")  # the Q-Former reads the instruction with its own tokenizer
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tok,
        qformer_tokenizer=qformer_tok,
        num_query_tokens=4,
    )
    templated(processor, chat_template(""))
    qformer = {"vocab_size": len(qformer_tok), "pad_token_id": qformer_tok.pad_token_id}
    return _blip_model(InstructBlipConfig, InstructBlipForConditionalGeneration, tok, qformer), processor


def chameleon() -> tuple[Any, Any]:
    from transformers import (
        ChameleonConfig,
        ChameleonForConditionalGeneration,
        ChameleonImageProcessorPil,
        ChameleonProcessor,
    )

    codebook = 16
    # Chameleon reads images as VQ codes that are text tokens named IMGIMG<code in letters>Z.
    image_words = ["IMGIMG" + "".join("ABCDEFGHIJ"[int(d)] for d in str(i)) + "Z" for i in range(codebook)]
    # Chameleon's processor ends every text with the tokenizer's separator token.
    tok = tokenizer(["<image>", "<racm3:break>", "<eoss>", "<sep>", *image_words], named={"image_token": "<image>"})
    tok.sep_token = "<sep>"
    processor = ChameleonProcessor(
        image_processor=ChameleonImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
        image_seq_length=4,
    )
    templated(processor, chat_template("<image>"))
    config = ChameleonConfig(
        **text_config(tok),
        vq_config={
            "embed_dim": 8,
            "num_embeddings": codebook,
            "latent_channels": 32,
            "resolution": 32,
            "base_channels": 32,  # GroupNorm's 32 groups; 4 halvings: 2 x 2 codes per image
            "channel_multiplier": [1, 1, 1, 1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [],
        },
        vocabulary_map=tok.get_vocab(),
    )
    return ChameleonForConditionalGeneration(config), processor


def kosmos_2() -> tuple[Any, Any]:
    from transformers import CLIPImageProcessorPil, Kosmos2Config, Kosmos2ForConditionalGeneration, Kosmos2Processor

    # Kosmos-2's processor takes the ids after the unknown token's as image placeholders
    # (XLM-R's layout): <unk> comes right after <pad>, <s>, </s>.
    tok = tokenizer(["<image>", "</image>", "<grounding>", "<phrase>", "</phrase>", "<object>", "</object>"], unk=True)
    processor = Kosmos2Processor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
        num_patch_index_tokens=16,
    )
    templated(processor, chat_template(""))
    config = Kosmos2Config(
        text_config={
            "vocab_size": len(processor.tokenizer),
            "embed_dim": HIDDEN,
            "layers": TEXT_LAYERS,
            "ffn_dim": 2 * HIDDEN,
            "attention_heads": 1,
            "max_position_embeddings": 2048,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        vision_config=vision(image_size=32, patch_size=16),
        latent_query_num=64,  # the processor's fixed count of image placeholders
    )
    return Kosmos2ForConditionalGeneration(config), processor


@dataclass(frozen=True)
class Family:
    """One row of the matrix: a family, the transformers model type of its tiny
    checkpoint, and the builder of that checkpoint."""

    name: str
    model_type: str
    builder: Callable[[], tuple[Any, Any]] = field(repr=False)
    note: str = ""


FAMILIES: tuple[Family, ...] = (
    Family("LLaVA-1.5", "llava", llava),
    Family("LLaVA-NeXT", "llava_next", llava_next),
    Family("Qwen2-VL", "qwen2_vl", qwen2_vl),
    Family("Qwen2.5-VL", "qwen2_5_vl", qwen2_5_vl),
    Family("Idefics3", "idefics3", idefics3),
    Family("SmolVLM", "smolvlm", smolvlm),
    Family("InternVL3", "internvl", internvl),
    Family("Llama 3.2 Vision", "mllama", mllama),
    Family("Gemma 3", "gemma3", gemma3),
    Family("PaliGemma", "paligemma", paligemma),
    Family("BLIP-2", "blip-2", blip_2),
    Family("InstructBLIP", "instructblip", instructblip),
    Family("Chameleon", "chameleon", chameleon),
    Family("Kosmos-2", "kosmos-2", kosmos_2),
)


# Families of the survey without a tiny checkpoint here, and the exact obstacle.
UNCOVERED: dict[str, str] = {
    "Fuyu": (
        "FuyuProcessor (transformers 5.19) encodes its image placeholders and drops the first token, "
        "assuming the word-prefix token its SentencePiece tokenizer puts first; a tokenizer trained here "
        "has none, so the processor loses an image token and refuses its own output. A real Fuyu "
        "checkpoint goes through the same generic code paths, unchecked here."
    ),
}


def family(name: str) -> Family:
    """A family by its row name or its model type."""
    for item in FAMILIES:
        if name in (item.name, item.model_type):
            return item
    raise KeyError(f"unknown family {name!r}; known: {', '.join(f.model_type for f in FAMILIES)}")


def build(name: str, out: Path, *, seed: int = 0) -> Path:
    """Write family `name`'s tiny checkpoint (model, processor, generation config) to `out`,
    atomically; an existing complete folder is kept."""
    import torch

    item = family(name)
    if (out / MANIFEST).is_file():
        return out

    def write(staging: Path) -> None:
        torch.manual_seed(seed)
        random.seed(seed)
        model, processor = item.builder()
        tok = processor.tokenizer
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.bos_token_id = tok.bos_token_id
        if item.model_type in ("llava", "llava_next", "gemma3", "paligemma"):
            # The CLIP/SigLIP tower's keys as vLLM reads them (transformers reads both).
            save_for_vllm(model, processor, staging)
        else:
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
        (staging / MANIFEST).write_text(json.dumps({"family": item.name, "model_type": item.model_type}))

    with staged(out) as staging:
        write(staging)
    return out
