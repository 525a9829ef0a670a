"""The run loop's save hooks for a relevance policy, shared by the SFT, DPO and GRPO trainers.

Checkpoints hold the model as it trains (LoRA adapters or full weights) and its tokenizer; final/
holds the merged full model, which loads anywhere with load_relevance_model, LoRA or not.
"""

from __future__ import annotations

from pathlib import Path


class PolicySaver:
    """``save_weights`` / ``save_final`` for RunLoop.fit, and the model a trainer returns."""

    def __init__(self, model, tokenizer, lora, write_final=None):
        self.model, self.tokenizer, self.lora = model, tokenizer, lora
        self.export = model  # the merged model once final/ is written
        self.write_final = write_final or self._write_plain

    def _write_plain(self, path: Path, export) -> None:
        export.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def save_weights(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def save_final(self, path: Path) -> None:
        self.export = self.model.merge_and_unload() if self.lora is not None else self.model
        self.write_final(path, self.export)

    def trained_model(self, final_dir, is_main: bool):
        """The merged model when final/ was written (on every rank), else the model as it stopped."""
        if final_dir is not None and self.lora is not None and not is_main:
            self.export = self.model.merge_and_unload()  # only the main rank wrote final/
        return self.export if final_dir is not None else self.model
