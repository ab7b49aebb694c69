"""The emulator's engine core: continuous batching like vLLM V1's scheduler, with no clock of its own.

Requests wait in a FIFO queue. Each step has a token budget (max_num_batched_tokens): running
requests are served first (one token for a decoding request, the next chunk for a partial prefill),
then waiting requests are admitted while the budget, max_num_seqs and free KV blocks allow, their
prompts cut into chunks that fit the budget. KV memory is paged in blocks of 16 tokens; when a
running request cannot get a block, the newest running request is preempted (its blocks freed, its
tokens recomputed later) and counted. Prefix caching keeps full prompt blocks under a chained hash,
so requests sharing a prefix skip its prefill.

The core is synchronous and time-free: `schedule()` says what runs next, the caller decides how long
that takes (the perf model) and when it ends (a real clock or a simulated one), then calls
`complete(step, t_end)` to advance every scheduled request. The asyncio server and the discrete-event
calibration both drive this same object.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Optional

from deploy.emulator.perf_model import PerfModel, StepShape, StepTiming

BLOCK_SIZE = 16

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(eq=False)
class Request:
    """One generation request as the engine sees it."""

    request_id: str
    prompt_len: int
    max_tokens: int
    arrival_time: float
    block_hashes: tuple[int, ...] = ()  # chained hashes of the prompt's full blocks (prefix caching)
    min_tokens: int = 0
    stop_at: Optional[int] = None  # output length at which an end-of-sequence token is sampled
    sink: Any = None  # whatever the driver attaches (the HTTP stream)
    http_time: float = 0.0  # when the client's request reached the server (before the frontend)

    status: str = WAITING
    num_computed: int = 0  # tokens whose KV is in the cache
    num_output: int = 0
    blocks: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    num_preemptions: int = 0
    queued_time: Optional[float] = None  # first scheduled
    first_token_time: Optional[float] = None
    last_token_time: Optional[float] = None
    finish_time: Optional[float] = None
    finish_reason: Optional[str] = None
    aborted: bool = False

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + self.num_output


@dataclass
class ScheduledStep:
    """What one step computes: (request, new tokens, cached context before the step)."""

    items: list[tuple[Request, int, int]]
    shape: StepShape
    preempted: list[Request]
    prefix_queries: int = 0
    prefix_hits: int = 0
    timing: Optional[StepTiming] = None

    @property
    def num_tokens(self) -> int:
        return self.shape.tokens


@dataclass
class StepOutput:
    """What a finished step produced."""

    tokens: list[Request]  # requests that got one new token (in order)
    finished: list[Request]
    prompt_tokens: int  # prompt tokens of requests that got their first token this step
    generation_tokens: int


class BlockPool:
    """Paged KV blocks with reference counts and an LRU of freed blocks that keep their prefix hash.

    Like vLLM's free-block queue: blocks never used are handed out first, then the least recently
    freed, whose cached prefix is forgotten at that moment. Never-used blocks are a counter, not a
    list, so a cache of millions of blocks costs nothing until it is used.
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True):
        if num_blocks <= 0:
            raise ValueError(f"the KV cache holds no blocks ({num_blocks}): nothing can run")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref: dict[int, int] = {}
        self.hash_of: dict[int, int] = {}
        self._fresh = 0  # blocks [_fresh, num_blocks) were never allocated
        self.free: OrderedDict[int, None] = OrderedDict()  # released blocks, least recently freed first
        self.cached: dict[int, int] = {}  # hash -> block id

    @property
    def num_free(self) -> int:
        return self.num_blocks - self._fresh + len(self.free)

    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def allocate(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            if self._fresh < self.num_blocks:
                b = self._fresh
                self._fresh += 1
            else:
                b, _ = self.free.popitem(last=False)
                h = self.hash_of.pop(b, None)
                if h is not None and self.cached.get(h) == b:
                    del self.cached[h]
            self.ref[b] = 1
            out.append(b)
        return out

    def lookup(self, hashes: tuple[int, ...]) -> list[int]:
        """The longest run of cached blocks at the start of `hashes`."""
        hits: list[int] = []
        if not self.enable_caching:
            return hits
        for h in hashes:
            b = self.cached.get(h)
            if b is None:
                break
            hits.append(b)
        return hits

    def is_free(self, block: int) -> bool:
        return self.ref.get(block, 0) == 0

    def touch(self, blocks: list[int]) -> None:
        for b in blocks:
            if self.ref.get(b, 0) == 0:
                self.free.pop(b, None)
            self.ref[b] = self.ref.get(b, 0) + 1

    def register(self, block: int, h: int) -> None:
        if self.enable_caching and block not in self.hash_of and h not in self.cached:
            self.hash_of[block] = h
            self.cached[h] = block

    def release(self, blocks: list[int]) -> None:
        # freed in reverse so a request's tail blocks are evicted before its shared prefix
        for b in reversed(blocks):
            r = self.ref[b] - 1
            if r == 0:
                del self.ref[b]
                self.free[b] = None
            else:
                self.ref[b] = r


@dataclass
class EngineConfig:
    num_gpu_blocks: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    block_size: int = BLOCK_SIZE
    enable_prefix_caching: bool = True


class EngineCore:
    """Scheduler, KV blocks and counters; time is whatever the caller passes in."""

    def __init__(self, config: EngineConfig, perf: PerfModel, seed: int = 0):
        if config.block_size != BLOCK_SIZE:
            raise ValueError(f"block size {config.block_size}: only {BLOCK_SIZE} is supported")
        self.cfg = config
        self.perf = perf
        self.pool = BlockPool(config.num_gpu_blocks, config.enable_prefix_caching)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.rng = random.Random(seed)
        # cumulative counters (the metrics layer reads and exports them)
        self.num_preemptions = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.prefix_queries_total = 0
        self.prefix_hits_total = 0
        self.steps = 0

    # --- requests
    def add_request(self, req: Request) -> None:
        if req.prompt_len <= 0:
            raise ValueError(f"request {req.request_id}: empty prompt")
        if req.prompt_len + req.max_tokens > self.cfg.max_model_len:
            raise ValueError(f"request {req.request_id}: {req.prompt_len} prompt + {req.max_tokens} output tokens "
                             f"exceed max_model_len {self.cfg.max_model_len}")
        req.status = WAITING
        self.waiting.append(req)

    def abort(self, req: Request) -> None:
        """Drop a request (client went away): frees its blocks at once."""
        if req.status == FINISHED:
            return
        req.aborted = True
        if req.status == RUNNING:
            self.running.remove(req)
            self.pool.release(req.blocks)
            req.blocks = []
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        req.status = FINISHED
        req.finish_reason = "abort"

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def kv_usage(self) -> float:
        return self.pool.usage()

    # --- scheduling
    def _blocks_needed(self, req: Request, upto_tokens: int) -> int:
        need = -(-upto_tokens // BLOCK_SIZE)
        return max(0, need - len(req.blocks))

    def _preempt(self, victim: Request) -> None:
        self.running.remove(victim)
        self.pool.release(victim.blocks)
        victim.blocks = []
        victim.num_computed = 0
        victim.status = WAITING
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)

    def schedule(self) -> Optional[ScheduledStep]:
        """Choose the next step's work; None when there is nothing to run."""
        budget = self.cfg.max_num_batched_tokens
        items: list[tuple[Request, int, int]] = []
        shape = StepShape()
        preempted: list[Request] = []
        scheduled: set[int] = set()
        # 1. running requests, oldest first; preempt the newest when blocks run out
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed, budget)
            if n <= 0:
                i += 1
                continue
            need = self._blocks_needed(req, req.num_computed + n)
            ok = True
            while need > self.pool.num_free:
                victim = self.running[-1]
                if id(victim) in scheduled:  # never take back what this step already holds
                    ok = False
                    break
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    ok = False
                    break
            if not ok:
                break
            if need:
                req.blocks.extend(self.pool.allocate(need))
            items.append((req, n, req.num_computed))
            shape.add(n, req.num_computed)
            scheduled.add(id(req))
            budget -= n
            i += 1
        # 2. waiting requests, in arrival order (not while this step had to preempt)
        queries = hits = 0
        while self.waiting and budget > 0 and not preempted and len(self.running) < self.cfg.max_num_seqs:
            req = self.waiting[0]
            hit_blocks: list[int] = []
            if req.num_computed == 0 and not req.blocks and req.block_hashes:
                hit_blocks = self.pool.lookup(req.block_hashes)
                # at least the prompt's last token is computed, to produce the first output token
                max_hit = (req.num_tokens - 1) // BLOCK_SIZE
                hit_blocks = hit_blocks[:max_hit]
            computed = len(hit_blocks) * BLOCK_SIZE
            n = min(req.num_tokens - computed, budget)
            need = -(-(computed + n) // BLOCK_SIZE) - len(hit_blocks)
            if need > self.pool.num_free - sum(1 for b in hit_blocks if self.pool.is_free(b)):
                break
            self.waiting.popleft()
            if req.num_preemptions == 0 and req.queued_time is None:
                queries += req.prompt_len
                hits += computed
                req.cached_tokens = computed
            self.pool.touch(hit_blocks)
            req.blocks = hit_blocks + self.pool.allocate(need)
            req.num_computed = computed
            req.status = RUNNING
            self.running.append(req)
            items.append((req, n, computed))
            shape.add(n, computed)
            budget -= n
        if not items:
            return None
        self.prefix_queries_total += queries
        self.prefix_hits_total += hits
        step = ScheduledStep(items=items, shape=shape, preempted=preempted, prefix_queries=queries,
                             prefix_hits=hits)
        step.timing = self.perf.step(shape)
        return step

    def mark_scheduled(self, step: ScheduledStep, t_start: float) -> None:
        for req, _, _ in step.items:
            if req.queued_time is None:
                req.queued_time = t_start

    def complete(self, step: ScheduledStep, t_end: float) -> StepOutput:
        """Advance every request of `step` as if it ended at `t_end`; sample tokens, finish requests."""
        self.steps += 1
        out_tokens: list[Request] = []
        finished: list[Request] = []
        prompt_tokens = 0
        for req, n, _ in step.items:
            if req.status != RUNNING:  # aborted while the step ran
                continue
            before = req.num_computed
            req.num_computed += n
            if before < req.prompt_len:
                self._register_full_blocks(req, before)
            if req.num_computed < req.num_tokens:
                continue  # a partial prefill: nothing sampled yet
            req.num_output += 1
            if req.first_token_time is None:
                req.first_token_time = t_end
                prompt_tokens += req.prompt_len  # counted once, when the prompt yields its first token
            req.last_token_time = t_end
            out_tokens.append(req)
            reason = None
            if req.num_output >= req.max_tokens:
                reason = "length"
            elif req.stop_at is not None and req.num_output >= max(req.stop_at, req.min_tokens):
                reason = "stop"
            elif req.num_tokens >= self.cfg.max_model_len:
                reason = "length"
            if reason:
                req.finish_reason = reason
                req.finish_time = t_end
                req.status = FINISHED
                finished.append(req)
        if finished:
            done = set(map(id, finished))
            self.running = [r for r in self.running if id(r) not in done]
            for req in finished:
                self.pool.release(req.blocks)
                req.blocks = []
        gen = len(out_tokens)
        self.prompt_tokens_total += prompt_tokens
        self.generation_tokens_total += gen
        return StepOutput(tokens=out_tokens, finished=finished, prompt_tokens=prompt_tokens, generation_tokens=gen)

    def _register_full_blocks(self, req: Request, before: int) -> None:
        if not req.block_hashes:
            return
        first = before // BLOCK_SIZE
        last = min(req.num_computed, req.prompt_len) // BLOCK_SIZE
        for bi in range(first, min(last, len(req.block_hashes), len(req.blocks))):
            self.pool.register(req.blocks[bi], req.block_hashes[bi])


class FrontendQueue:
    """The API server process as one FIFO worker: requests and streamed tokens wait their turn.

    A request is handed to the engine after its parsing/tokenizing turn plus a fixed latency; a step's
    tokens reach the clients after their detokenize/serialize turn. Both the live server and the
    simulation use this, so they see the same queueing.
    """

    def __init__(self, req_s: float, token_s: float, latency_s: float):
        self.req_s, self.token_s, self.latency_s = req_s, token_s, latency_s
        self.free_at = 0.0

    def admit_time(self, t: float) -> float:
        self.free_at = max(self.free_at, t) + self.req_s
        return self.free_at + self.latency_s

    def deliver_time(self, t_end: float, tokens: int) -> float:
        if not tokens or not self.token_s:
            return t_end
        self.free_at = max(self.free_at, t_end) + self.token_s * tokens
        return self.free_at
