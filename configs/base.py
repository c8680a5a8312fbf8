"""Every knob llada_jax has, with its default. Other configs import this and override a few fields.

Defaults follow the LLaDA paper's 8B pretraining run (../shared/LLADA_SPEC.md) except the model shape,
which is a small one so that a bare `--config=configs/base.py` runs anywhere.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # The mask predictor: a LLaMA-style Transformer, bidirectional unless causal=True (AR baseline).
    c.model = ml_collections.ConfigDict()
    # the architecture (llada_jax/models/registry.py): llada (the dense mask predictor) | llada_moe (LLaDA-MoE) |
    # llada2_moe (LLaDA2.0): mixtures of experts configured by model.moe below
    c.model.family = "llada"
    c.model.vocab_size = 126464  # rows of the embedding / columns of the output head
    c.model.d_model = 512
    c.model.n_layers = 8
    c.model.n_heads = 8
    c.model.n_kv_heads = 0  # 0: same as n_heads (multi-head attention, as in the released models)
    c.model.head_dim = 0  # 0: d_model // n_heads
    c.model.mlp_hidden = 1536
    # Options of the architectures models are imported from (all off in LLaDA): RMSNorm over each head of q and k
    # before RoPE (Qwen3, LLaDA-MoE, LLaDA2), biases on q/k/v (Qwen2), RoPE on only the first rotary_dim
    # dimensions of each head (0: all; LLaDA2 rotates 64 of 128), and a head tied to the embedding table.
    c.model.qk_norm = False
    c.model.qkv_bias = False
    c.model.rotary_dim = 0
    c.model.tie_embeddings = False
    # The Hugging Face architecture the weights were imported from (llama | qwen2 | qwen3; set by `convert
    # from-hf`): `convert to-hf` writes that architecture's names back. "": LLaDA format (Llama for causal=True).
    c.model.hf_format = ""
    c.model.max_seq_len = 4096
    c.model.rope_theta = 500000.0
    c.model.rms_norm_eps = 1e-5
    c.model.init_std = 0.02
    c.model.causal = False  # True: the autoregressive baseline used in scaling sweeps
    # Read the prediction for position i from the hidden state at i - 1, as an AR model does (Dream's shift): an
    # AR checkpoint continued with block diffusion then starts out predicting what it already knew. Block
    # diffusion only (objectives/block_diffusion.py; models/logit_shift.py says which state is used where).
    c.model.logit_shift = False
    c.model.dtype = "bfloat16"  # compute dtype; params stay in param_dtype
    c.model.param_dtype = "float32"
    c.model.scan_layers = True  # lax.scan over the stacked layers (fast compiles) or an unrolled loop
    # What each layer keeps for the backward pass: none (everything) | full (nothing) | save_dots (matmul
    # outputs) | save_proj (q/k/v/attention/MLP projections) | offload_proj (those, in host memory; TPU/GPU)
    c.model.remat = "none"
    # auto: cudnn on GPU, splash on TPU, blockwise elsewhere | xla (dense reference) | cudnn | splash | blockwise
    c.model.attention = "auto"
    c.model.attention_block = 512  # key positions per block of the blockwise kernel
    c.model.loss_chunk_tokens = 2048  # tokens per device in one chunk of the output head + CE (never [B, T, V] logits)
    c.model.mask_token_id = 126336
    c.model.eos_token_id = 126081
    c.model.pad_token_id = 126081
    # Mixture of experts (families llada_moe and llada2_moe; experts=0 for the dense family). See
    # llada_jax/models/moe_routing.py and moe_dispatch.py; configs/llada2_mini.py has LLaDA2.0's values.
    c.model.moe = ml_collections.ConfigDict()
    c.model.moe.experts = 0  # routed experts per MoE layer
    c.model.moe.top_k = 2  # experts per token
    c.model.moe.expert_hidden = 0  # SwiGLU hidden size of one routed expert
    c.model.moe.shared_experts = 0  # always-on experts (one fused SwiGLU of shared_experts * expert_hidden)
    c.model.moe.first_dense_layers = 0  # leading layers with a dense SwiGLU of model.mlp_hidden
    c.model.moe.router = "softmax"  # softmax | sigmoid scores, computed in float32
    c.model.moe.norm_topk = False  # renormalise the chosen experts' scores to sum 1
    c.model.moe.routed_scaling = 1.0  # routed experts' weights times this
    c.model.moe.n_groups = 1  # group-limited routing: experts split into n_groups groups, and each token
    c.model.moe.topk_groups = 1  # chooses its experts inside its topk_groups best groups
    c.model.moe.expert_bias = False  # aux-loss-free balancing: a per-expert bias for selection only, updated by
    c.model.moe.bias_update_rate = 1e-3  # load after each step (bias += rate * sign(mean load - load)), no gradient
    c.model.moe.load_balance_coef = 0.0  # load-balancing loss weight (LLaDA-MoE: 0.01)
    c.model.moe.z_loss_coef = 0.0  # router z-loss weight (LLaDA-MoE: 0.001)
    c.model.moe.capacity_factor = 0.0  # 0: dropless; c: an expert takes at most c x its fair share per device
    c.model.moe.kernel = "auto"  # grouped matmul: auto (megablox on TPU, tiled elsewhere) | ragged_dot | megablox | tiled

    # Device mesh. data/fsdp/tensor are the sizes within one slice (ICI); -1 takes whatever devices the
    # other axes leave. dcn_* multiply an axis across slices (multi-slice pods; granule = slice, or process
    # where devices have no slice index). Total axis size = ici * dcn.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.expert = 1  # expert parallelism: splits a mixture of experts' experts (and the batch elsewhere)
    c.mesh.tensor = 1
    c.mesh.dcn_data = 1
    c.mesh.dcn_fsdp = 1
    c.mesh.dcn_expert = 1
    c.mesh.dcn_tensor = 1

    # Multi-process runtime (jax.distributed). Cloud TPU VMs and SLURM are detected when auto is on.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.auto = True
    c.distributed.coordinator_address = ""  # host:port of process 0, for clusters JAX cannot detect
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    c.distributed.timeout_s = 300
    # A process silent this long is declared lost and the others stop (they can be resumed from the last checkpoint)
    c.distributed.heartbeat_timeout_s = 60

    c.train = ml_collections.ConfigDict()
    # mdm (masked diffusion pretraining) | sft | ar (next-token baseline) | block_diffusion (BD3-LM / LLaDA2: blocks
    # denoised given the clean blocks before them; pretraining on documents, SFT on conversations)
    c.train.objective = "mdm"
    c.train.steps = 1000
    c.train.global_batch_size = 8  # sequences per optimizer step, over all processes
    c.train.grad_accum_steps = 1  # micro-batches per step; global_batch_size must divide evenly
    c.train.seq_len = 512
    c.train.seed = 0
    c.train.mask_eps = 1e-3  # p = (1 - eps) * t + eps
    c.train.random_length_fraction = 0.01  # share of sequences cut to a random length U[1, seq_len]
    c.train.log_every = 10
    c.train.eval_every = 0  # 0: only at the end
    c.train.eval_batches = 4
    c.train.eval_draws = 1  # noise draws per eval batch in the final eval (more draws: smaller standard error)
    c.train.max_nonfinite_in_a_row = 10  # skipped (non-finite) updates tolerated in a row before halting
    c.train.init_from = ""  # params checkpoint to start from (fresh optimizer, step 0), e.g. for SFT
    # Gaussian noise (this standard deviation) on the embedding of every mask-token input while training, falling
    # linearly to 0 at step mask_embedding_noise_steps (0: the whole run); eval, sample and score see none.
    # LLaDA2.0 adds it early when continuing an AR model, whose mask embedding was never trained. The AR baseline
    # (no mask tokens in its inputs) ignores it.
    c.train.mask_embedding_noise = 0.0
    c.train.mask_embedding_noise_steps = 0
    # Block diffusion (train.objective=block_diffusion). Block b(i) = i // block_size of each row; a block size
    # >= seq_len is LLaDA's full-sequence objective. Eval, sample and score use the size training ends at
    # (config.decode_block_size: the schedule's last entry, else block_size).
    c.train.block_size = 32
    # A curriculum over steps, "SIZE:FRACTION,..." in order (fractions of train.steps, adding up to 1); "" keeps
    # block_size. LLaDA2.0's warmup-stable-decay shape: "1:0.05,4:0.05,32:0.05,64:0.05,4096:0.5,2048:0.1,...,32:0.1"
    c.train.block_schedule = ""
    c.train.block_noise = "block"  # block: a noise level per block (BD3-LM) | sequence: one per row
    # elbo: CE / p normalised like LLaDA (the bound) | mean: mean CE over the masked tokens, no 1/p (dFactory's SFT)
    c.train.block_weighting = "elbo"
    # t ~ U(noise_low, noise_high), p = (1 - mask_eps) t + mask_eps (dFactory's SFT: 0.3, 0.8 with mask_eps ~ 0)
    c.train.noise_low = 0.0
    c.train.noise_high = 1.0
    # Each example twice, with complementary masks (a token masked in one copy is clean in the other), so every
    # maskable token is supervised once per step (LLaDA2's SFT); doubles the rows of the forward pass.
    c.train.complementary_masks = False

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000  # 0: never by step count
    c.checkpoint.every_minutes = 0.0  # 0: never by time
    c.checkpoint.keep_last = 3  # 0: keep all
    c.checkpoint.keep_every = 0  # also keep every step that is a multiple of this, permanently (0: none)
    c.checkpoint.async_save = True  # write in the background while training continues
    c.checkpoint.tensorboard = True  # event files under WORKDIR/tensorboard (process 0)
    # A save (or the wait for one) stuck longer than this ends the process with one sentence, and so does a
    # run still going this long after SIGTERM/SIGINT (a host stuck in a collective never reaches a step boundary).
    c.checkpoint.timeout_s = 900.0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 4e-4
    c.optimizer.schedule = "wsd"  # wsd | cosine | constant
    c.optimizer.warmup_steps = 2000
    # Warmup-stable-decay, as fractions of train.steps (paper: 4e-4 until 1.2T of 2.3T tokens, 1e-4 until
    # 2.0T, then linear to 1e-5).
    c.optimizer.wsd_drop_at = 1.2 / 2.3
    c.optimizer.wsd_drop_ratio = 0.25
    c.optimizer.wsd_decay_from = 2.0 / 2.3
    c.optimizer.final_ratio = 0.025  # final lr / peak lr (wsd and cosine)
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1
    c.optimizer.grad_clip = 1.0  # global-norm clipping; 0 disables

    # Input pipeline (llada_jax/data/). Anything but source="prepared" is tokenized on first use into
    # cache_dir (`llada-jax prepare` does the same ahead of time, for big corpora); training then reads the
    # ArrayRecord shards through grain.
    c.data = ml_collections.ConfigDict()
    c.data.tokenizer = "byte"  # byte (no file) | sentencepiece (a .model) | hf (a tokenizer.json, e.g. LLaDA's)
    c.data.tokenizer_path = ""  # the .model file or the tokenizer.json (or its folder) for sentencepiece / hf
    # pydoc: CPython's bundled documentation (no download) | text: files in data.path, one document each |
    # jsonl / parquet: field data.text_field of each line / row | sft_jsonl: conversations ({"prompt",
    # "response"} or {"messages"}) | seqio: a registered Task or Mixture | prepared: a folder in data.path
    c.data.source = "pydoc"
    c.data.path = ""  # files or globs (comma-separated) for text/jsonl/parquet/sft_jsonl; the folder for prepared
    c.data.text_field = "text"  # jsonl key / parquet column holding the document
    c.data.seqio_task = ""  # seqio Task or Mixture name when source == "seqio"
    c.data.seqio_split = "train"
    c.data.seqio_feature = "targets"  # the tokenized feature to train on
    c.data.import_module = ""  # comma-separated modules to import first (they register seqio Tasks / chat templates)
    c.data.include_stdlib_source = False  # pydoc source: also the standard library's .py files
    c.data.eval_fraction = 0.05  # share of documents held out (evenly spread) as the eval split
    c.data.docs_per_shard = 1000  # documents per ArrayRecord shard when preparing on first use
    c.data.strict = False  # True: the first bad document (empty, non-UTF-8, missing field) is an error, not a skip
    c.data.cache_dir = ""  # where sources are prepared on first use; "" = ~/.cache/llada_jax/datasets
    c.data.mixture = ""  # "folder_a:0.7,folder_b:0.3": prepared folders mixed by share of rows (overrides source)
    c.data.packing = "concat"  # concat: join with EOS and split (paper) | first_fit: whole documents + segment_ids
    c.data.shuffle = True  # global document shuffle by train.seed, a new permutation every epoch
    # batch: every process forms the global batch and keeps its rows (data independent of the process count)
    # | document: each process reads only its share of documents (reads scale with the pod; order depends on it)
    c.data.shard_by = "batch"
    c.data.read_threads = 4  # threads reading shards in each process
    c.data.worker_count = 0  # grain worker processes per host (0: read in the training process)
    c.data.worker_buffer_size = 2  # batches each worker prepares ahead
    c.data.chat_template = "auto"  # SFT: auto (llada for hf, else plain) | plain | llada
    c.data.sft_overlong = "truncate"  # SFT examples longer than train.seq_len: truncate the response | drop

    return c
