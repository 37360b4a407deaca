"""The vLLM engine process: run by vLLM's own venv (`make setup-vllm`), driven by `pipeline.vllm_engine`.

It imports vLLM, torch and the standard library only, never the pipeline: the two venvs pin different
transformers. It listens on a Unix socket, then answers requests one at a time: token ids in, token
ids (or log-probs) out, and new weights from a safetensors file. Run as a script:
`python vllm_worker.py SOCKET MODEL_DIR OPTIONS_JSON`, with the authkey in PIPELINE_VLLM_AUTHKEY.
"""

import json
import os
import sys
import traceback
from multiprocessing.connection import Connection, Listener


def _engine(model_dir: str, options: dict):
    from vllm import LLM

    return LLM(
        model=model_dir,
        skip_tokenizer_init=True,  # token ids both ways: the trainer's tokenizer is the only one
        dtype=options["dtype"],
        max_model_len=options["max_model_len"],
        seed=options["seed"],
        enforce_eager=options["enforce_eager"],
        gpu_memory_utilization=options["gpu_memory_utilization"],
        enable_prefix_caching=False,  # a prompt's cached keys would outlive a weight update
    )


def _generate(llm, request: dict) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    def sampling(seed: int | None) -> SamplingParams:
        return SamplingParams(
            temperature=request["temperature"],
            max_tokens=request["max_tokens"],
            stop_token_ids=request["stop_token_ids"],
            ignore_eos=True,  # the given stop token only, as the pipeline's own sampler
            detokenize=False,
            seed=seed,
        )

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]]
    seed = request["seed"]
    params = sampling(None) if seed is None else [sampling(seed + i) for i in range(len(prompts))]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outputs]


def _logprobs(llm, request: dict) -> list[list[float]]:
    """Log-probs of given responses after their prompts (temperature 1), from the prompt log-probs of the whole."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    whole = [p + r for p, r in zip(request["prompts"], request["responses"], strict=True)]
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in whole], params, use_tqdm=False)
    rows = []
    for out, prompt, ids in zip(outputs, request["prompts"], whole, strict=True):
        rows.append([out.prompt_logprobs[i][ids[i]].logprob for i in range(len(prompt), len(ids))])
    return rows


def _load_weights(llm, request: dict) -> None:
    from safetensors.torch import load_file

    weights = load_file(request["path"])
    # In place, on every worker: the CPU backend repacks weights after loading, so a model's own
    # `load_weights` (TRL's colocate path) fails there; `reload_weights` repacks again
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})


def _serve(connection: Connection, llm) -> None:
    handlers = {"generate": _generate, "logprobs": _logprobs, "load_weights": _load_weights}
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the pipeline's process is gone
            return
        if request["op"] == "close":
            connection.send({"ok": True})
            return
        try:
            connection.send({"ok": True, "result": handlers[request["op"]](llm, request)})
        except Exception as error:  # the pipeline shows it; the engine stays up for the next request
            traceback.print_exc()
            connection.send({"ok": False, "error": f"{type(error).__name__}: {error}"})


def main() -> None:
    address, model_dir, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    listener = Listener(address, family="AF_UNIX", authkey=bytes.fromhex(os.environ["PIPELINE_VLLM_AUTHKEY"]))
    connection = listener.accept()
    try:
        import vllm

        llm = _engine(model_dir, options)
    except Exception as error:
        traceback.print_exc()
        connection.send({"ok": False, "error": f"{type(error).__name__}: {error}"})
        return
    connection.send({"ok": True, "version": vllm.__version__})
    _serve(connection, llm)


if __name__ == "__main__":
    main()
