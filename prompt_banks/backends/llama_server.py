"""`python -m prompt_banks.backends.llama_server ARGS`: llama-cpp-python's OpenAI-compatible
server (`python -m llama_cpp.server`, same arguments), with the model loaded as the `local`
backend loads it (no weight repacking; see `local.without_weight_repacking`)."""

from __future__ import annotations

from llama_cpp.server.__main__ import main as server_main

from prompt_banks.backends.local import without_weight_repacking


def main() -> None:
    # The server loads its model at start-up and keeps it; the patch only has to cover that.
    with without_weight_repacking():
        server_main()


if __name__ == "__main__":
    main()
