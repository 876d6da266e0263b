"""Read a sentence-transformers folder and reproduce the modules it runs after the transformer.

A folder saved by sentence-transformers lists its modules, in order, in ``modules.json``. whiten
reproduces the chains a sentence embedding model is built from: Transformer → Pooling, then any
of Dense, LayerNorm, Dropout (nothing at inference) and Normalize. Any other module is refused by
name, since skipping it would give other vectors than ``SentenceTransformer(folder).encode``.

Both layouts are read:

- 3.x–5.x: types ``sentence_transformers.models.Pooling``; the Pooling config has one boolean per
  mode (``pooling_mode_mean_tokens`` ...; several true are concatenated in a fixed order);
  ``sentence_bert_config.json`` holds ``max_seq_length`` and ``do_lower_case``.
- 6.x: types with the full module path (``sentence_transformers.sentence_transformer.modules.
  pooling.Pooling``); the Pooling config has ``"pooling_mode": "mean"`` or a list of modes
  (concatenated in that order); the maximum length is the tokenizer's ``model_max_length``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from whiten_cli.errors import WhitenError

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# The 3.x–5.x flags, in the order sentence-transformers concatenates the modes they switch on.
_LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Dense activations by the class path sentence-transformers writes → torch.nn class name.
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "Identity",
    "torch.nn.modules.activation.Tanh": "Tanh",
    "torch.nn.modules.activation.ReLU": "ReLU",
    "torch.nn.modules.activation.GELU": "GELU",
    "torch.nn.modules.activation.Sigmoid": "Sigmoid",
    "torch.nn.modules.activation.SiLU": "SiLU",
}
_SENTENCE_EMBEDDING = "sentence_embedding"
_TRANSFORMER_CONFIGS = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                        "sentence_camembert_config.json", "sentence_albert_config.json",
                        "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")


@dataclass(frozen=True)
class Dense:
    """A linear layer (+ activation, + residual in 6.x) on the sentence embedding."""

    folder: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a torch.nn class name from _ACTIVATIONS
    residual: bool

    @property
    def spec(self) -> str:
        extras = ("" if self.bias else ",nobias") + (",residual" if self.residual else "")
        return f"dense({self.in_features}->{self.out_features},{self.activation.lower()}{extras})"


@dataclass(frozen=True)
class LayerNorm:
    folder: Path
    dimension: int

    @property
    def spec(self) -> str:
        return f"layernorm({self.dimension})"


@dataclass(frozen=True)
class Normalize:
    spec = "normalize"


HeadModule = Dense | LayerNorm | Normalize


@dataclass(frozen=True)
class ModelPooling:
    """What a sentence-transformers folder does after its transformer: pooling modes (their
    vectors concatenated), then the head modules in order; and how it tokenizes."""

    modes: tuple[str, ...]
    embedding_dimension: int  # the transformer's token vector size
    head: tuple[HeadModule, ...]
    transformer_subfolder: str
    max_seq_length: int | None  # None: the tokenizer's and the model's limits decide
    do_lower_case: bool
    # A WeightedLayerPooling before the Pooling: (layer_start, weights); the token vectors pooled are
    # then the weighted mean of hidden_states[layer_start:] instead of the last hidden state.
    layer_weights: tuple[int, tuple[float, ...]] | None = None

    @property
    def mode(self) -> str:
        """The whole chain in one string, e.g. ``mean>dense(32->8,tanh)>normalize`` (a cache key part)."""
        layers = []
        if self.layer_weights is not None:
            start, weights = self.layer_weights
            layers = [f"layers({start}:{','.join(f'{w:g}' for w in weights)})"]
        return ">".join([*layers, "+".join(self.modes), *(module.spec for module in self.head)])

    @property
    def normalize(self) -> bool:
        """Whether the vectors come out L2-normalized (a Normalize module last)."""
        return bool(self.head) and isinstance(self.head[-1], Normalize)

    @property
    def dim(self) -> int:
        """The dimension of the vectors the chain gives."""
        dim = len(self.modes) * self.embedding_dimension
        for module in self.head:
            if isinstance(module, Dense):
                dim = module.out_features
        return dim


def read_model_pooling(path: Path) -> ModelPooling | None:
    """The module chain of a sentence-transformers folder, or None for a plain HF folder.

    Raises WhitenError naming the module for a chain whiten cannot reproduce exactly.
    """
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        chain = [(str(module["type"]), str(module.get("path", ""))) for module in modules]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WhitenError(f"{modules_file}: unreadable sentence-transformers configuration ({exc})") from None
    kinds = [_module_kind(path, kind) for kind, _ in chain]
    layer_weights = None
    if kinds[:3] == ["Transformer", "WeightedLayerPooling", "Pooling"]:  # as `whiten export` writes layer means
        layer_weights = _read_layer_weights(path / chain[1][1])
        # sentence-transformers hands the module the hidden states only when the model's config.json
        # asks for them; otherwise the module passes the last hidden state through unchanged.
        if _read_config(path / chain[0][1]).get("output_hidden_states") is not True:
            layer_weights = None
        del kinds[1], chain[1]
    if kinds[:2] != ["Transformer", "Pooling"]:
        raise WhitenError(f"{path}: sentence-transformers modules {' → '.join(kinds) or 'none'} are not supported "
                          f"(whiten reproduces Transformer → [WeightedLayerPooling →] Pooling → "
                          f"Dense/LayerNorm/Dropout/Normalize)")
    _check_no_default_prompt(path)
    transformer_subfolder = chain[0][1]
    max_seq_length, do_lower_case = _transformer_settings(path / transformer_subfolder)
    modes, embedding_dimension = _read_pooling(path / chain[1][1])
    head: list[HeadModule] = []
    dim = len(modes) * embedding_dimension
    for kind, (type_path, subfolder) in zip(kinds[2:], chain[2:]):
        folder = path / subfolder
        if kind == "Dense":
            module = _read_dense(folder, dim)
            dim = module.out_features
        elif kind == "LayerNorm":
            module = LayerNorm(folder, _positive_int(_read_config(folder), "dimension", folder))
            if module.dimension != dim:
                raise WhitenError(f"{folder}: LayerNorm of dimension {module.dimension} after vectors of {dim}")
        elif kind == "Normalize":
            _check_sentence_embedding(_read_config(folder, missing_ok=True), folder, "Normalize")
            module = Normalize()
        elif kind == "Dropout":
            continue  # nothing at inference
        else:
            raise WhitenError(f"{path}: sentence-transformers module {type_path} ({subfolder or 'no folder'}) after the "
                              f"Pooling is not supported (whiten reproduces Dense, LayerNorm, Dropout and Normalize)")
        head.append(module)
    return ModelPooling(modes=modes, embedding_dimension=embedding_dimension, head=tuple(head),
                        transformer_subfolder=transformer_subfolder, max_seq_length=max_seq_length,
                        do_lower_case=do_lower_case, layer_weights=layer_weights)


def _read_layer_weights(folder: Path) -> tuple[int, tuple[float, ...]]:
    """(layer_start, weights) of a WeightedLayerPooling module."""
    config = _read_config(folder)
    start = config.get("layer_start", 4)
    layers = _positive_int(config, "num_hidden_layers", folder) if "num_hidden_layers" in config else 12
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= layers:
        raise WhitenError(f"{folder}: WeightedLayerPooling layer_start {start!r} is not a layer of {layers}")
    try:  # read with numpy: reading the folder's configuration does not import torch
        from safetensors.numpy import load_file

        weights = load_file(str(folder / "model.safetensors")).get("layer_weights")
    except Exception as exc:  # missing or damaged: safetensors raises several kinds
        raise WhitenError(f"{folder}: unreadable WeightedLayerPooling weights model.safetensors ({exc})") from None
    if weights is None or tuple(weights.shape) != (layers + 1 - start,):
        raise WhitenError(f"{folder}: WeightedLayerPooling needs {layers + 1 - start} layer_weights")
    return start, tuple(float(w) for w in weights)


def layer_mean(hidden_states, layer_weights: tuple[int, tuple[float, ...]]):
    """The token vectors a WeightedLayerPooling gives: the weighted mean of hidden_states[start:]."""
    start, weights = layer_weights
    total = sum(weight * states.float() for weight, states in zip(weights, hidden_states[start:]) if weight)
    return total / sum(weights)


def _module_kind(path: Path, type_path: str) -> str:
    """The class name of a sentence-transformers module; other packages' modules are refused."""
    if not type_path.startswith("sentence_transformers."):
        raise WhitenError(f"{path}: module {type_path} is not a sentence-transformers module; whiten cannot reproduce it")
    return type_path.rsplit(".", 1)[-1]


def read_json(file: Path, *, missing_ok: bool = False, expect: type = dict):
    """A model folder's JSON file, which must hold an ``expect`` (dict or list); a missing file is
    empty with ``missing_ok``, anything unreadable one error naming the file."""
    if missing_ok and not file.exists():
        return expect()
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WhitenError(f"{file}: unreadable model configuration ({exc})") from None
    if not isinstance(value, expect):
        raise WhitenError(f"{file}: unreadable model configuration (not a JSON {'object' if expect is dict else 'list'})")
    return value


def _read_config(folder: Path, name: str = "config.json", missing_ok: bool = False) -> dict:
    return read_json(folder / name, missing_ok=missing_ok)


def _positive_int(config: dict, key: str, folder: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WhitenError(f"{folder}: sentence-transformers configuration needs a positive integer {key}, got {value!r}")
    return value


def _check_sentence_embedding(config: dict, folder: Path, kind: str) -> None:
    """6.x modules may read or write other features than the sentence embedding (token vectors)."""
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, _SENTENCE_EMBEDDING) not in (_SENTENCE_EMBEDDING, None):
            raise WhitenError(f"{folder}: {kind} on {config[key]!r} is not supported (only on the sentence embedding)")


def _check_no_default_prompt(path: Path) -> None:
    """A default prompt is put before every text by sentence-transformers; whiten has no prompts."""
    config = _read_config(path, "config_sentence_transformers.json", missing_ok=True)
    name = config.get("default_prompt_name")
    prompts = config.get("prompts") or {}
    if name is not None and (not isinstance(name, str) or not isinstance(prompts, dict) or prompts.get(name)):
        raise WhitenError(f"{path}: the default prompt {name!r} changes every input text; whiten does not add prompts")


def _transformer_settings(folder: Path) -> tuple[int | None, bool]:
    """``max_seq_length`` and ``do_lower_case`` of the Transformer module (3.x–5.x), and a refusal
    of 6.x Transformers that do something else than feature extraction on text."""
    config = next((_read_config(folder, name) for name in _TRANSFORMER_CONFIGS if (folder / name).exists()), {})
    task = config.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise WhitenError(f"{folder}: sentence-transformers Transformer task {task!r} is not supported (feature-extraction only)")
    modalities = config.get("modality_config", {"text": {"method": "forward", "method_output_name": "last_hidden_state"}})
    text = modalities.get("text") if isinstance(modalities, dict) else None
    if not isinstance(text, dict) or (text.get("method"), text.get("method_output_name"),
                                      config.get("module_output_name", "token_embeddings")) != (
            "forward", "last_hidden_state", "token_embeddings"):
        raise WhitenError(f"{folder}: sentence-transformers Transformer outputs other than the last hidden state are not supported")
    if config.get("processing_kwargs"):
        raise WhitenError(f"{folder}: sentence-transformers processing_kwargs change tokenization; not supported")
    max_seq_length = config.get("max_seq_length")
    if max_seq_length is not None:
        max_seq_length = _positive_int(config, "max_seq_length", folder)
    return max_seq_length, bool(config.get("do_lower_case", False))


def _read_pooling(folder: Path) -> tuple[tuple[str, ...], int]:
    config = _read_config(folder)
    if "pooling_mode" in config:  # 6.x: a mode or a list of them, concatenated in that order
        modes = config["pooling_mode"]
        modes = (modes,) if isinstance(modes, str) else tuple(modes) if isinstance(modes, list) else (repr(modes),)
    else:  # 3.x–5.x: one flag per mode; none set means mean, as sentence-transformers 6 reads it
        modes = tuple(mode for key, mode in _LEGACY_POOLING_FLAGS.items() if config.get(key)) or ("mean",)
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown or not modes:
        raise WhitenError(f"{folder}: sentence-transformers pooling {', '.join(map(str, unknown)) or 'none'} is not supported "
                          f"(choose from {', '.join(POOLING_MODES)})")
    key = "embedding_dimension" if "embedding_dimension" in config else "word_embedding_dimension"
    return modes, _positive_int(config, key, folder)


def _read_dense(folder: Path, dim: int) -> Dense:
    config = _read_config(folder)
    _check_sentence_embedding(config, folder, "Dense")
    activation_path = config.get("activation_function", "torch.nn.modules.activation.Tanh")  # the Dense default
    if activation_path not in _ACTIVATIONS:
        raise WhitenError(f"{folder}: Dense activation {activation_path} is not supported "
                          f"({', '.join(sorted(_ACTIVATIONS.values()))})")
    dense = Dense(folder=folder, in_features=_positive_int(config, "in_features", folder),
                  out_features=_positive_int(config, "out_features", folder), bias=bool(config.get("bias", True)),
                  activation=_ACTIVATIONS[activation_path], residual=bool(config.get("use_residual", False)))
    if dense.in_features != dim:
        raise WhitenError(f"{folder}: Dense takes vectors of {dense.in_features}, but gets vectors of {dim}")
    return dense


def pool(modes: tuple[str, ...], states, mask):
    """Sentence vectors from token states (batch, tokens, dim) as sentence-transformers' Pooling
    gives them; ``mask`` (batch, tokens, 1) is 1 on real tokens, which come first in each row."""
    import torch

    counts = mask.sum(1)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(states[:, 0])
        elif mode == "max":
            parts.append(states.masked_fill(mask == 0, float("-inf")).max(1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (states * mask).sum(1)
            parts.append(total / counts.clamp(min=1e-9) if mode == "mean" else total / counts.clamp(min=1e-9).sqrt())
        elif mode == "weightedmean":
            weights = mask * torch.arange(1, states.shape[1] + 1, device=states.device, dtype=states.dtype).view(1, -1, 1)
            parts.append((states * weights).sum(1) / weights.sum(1).clamp(min=1e-9))
        else:  # lasttoken
            last = (counts.long().squeeze(-1) - 1).clamp(min=0)
            parts.append(states[torch.arange(states.shape[0], device=states.device), last])
    return torch.cat(parts, dim=-1)


def load_head(chain: ModelPooling, device: str):
    """The head modules as one float32 function of the pooled vectors, weights loaded from their folders."""
    import torch

    steps = []
    for module in chain.head:
        if isinstance(module, Normalize):
            steps.append(lambda x: torch.nn.functional.normalize(x, p=2, dim=-1))
            continue
        layer = torch.nn.Module()
        if isinstance(module, Dense):
            layer.linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias)
            if module.residual and module.in_features != module.out_features:
                layer.residual = torch.nn.Linear(module.in_features, module.out_features, bias=False)
        else:
            layer.norm = torch.nn.LayerNorm(module.dimension)
        try:
            layer.load_state_dict(_load_weights(module.folder))
        except RuntimeError as exc:  # missing, unexpected or misshapen tensors
            raise WhitenError(f"{module.folder}: weights do not fit the configuration ({str(exc).splitlines()[0]})") from None
        layer = layer.float().to(device).eval()
        if isinstance(module, Dense):
            steps.append(_dense_step(layer, getattr(torch.nn, module.activation)(), module.residual))
        else:
            steps.append(layer.norm)

    def head(vectors):
        for step in steps:
            vectors = step(vectors)
        return vectors

    return head


def _dense_step(layer, activation, residual: bool):
    def step(x):
        out = activation(layer.linear(x))
        if residual:
            out = out + (layer.residual(x) if hasattr(layer, "residual") else x)
        return out

    return step


def _load_weights(folder: Path) -> dict:
    """A module's tensors: model.safetensors, else pytorch_model.bin (tensors only, never pickled objects)."""
    import torch

    try:
        if (folder / "model.safetensors").exists():
            from safetensors.torch import load_file

            return load_file(str(folder / "model.safetensors"))
        if (folder / "pytorch_model.bin").exists():
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch.load raise many kinds for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WhitenError(f"{folder}: unreadable module weights ({reason})") from None
    raise WhitenError(f"{folder}: no module weights (expected model.safetensors or pytorch_model.bin)")
