"""Write your own pass in your own file and run it in a compression pipeline, without touching
the package.

    python examples/custom_pass.py                       # MiniLM on Rotten Tomatoes, small budget
    python examples/custom_pass.py --model path/to/bert --train train.tsv --eval eval.tsv

The pass below drops the top encoder layers (Sajjad et al., "On the Effect of Dropping Layers of
Pre-trained Transformer Models", 2020, arXiv:2004.03844: "top-layer dropping", Section 3). Like
every built-in pass it is a frozen dataclass whose fields are its options, declares what it
consumes and produces, and validates its options. ``@register_pass`` makes its name usable in
pipeline specs; the pipeline then fine-tunes, drops layers, prunes 50% of the remaining weights
with gradual magnitude pruning (which also retrains the smaller model) and exports to ONNX.
"""

import argparse
import copy
from dataclasses import dataclass
from typing import ClassVar

import compressor
from compressor import Pass, PassResult, option, register_pass
from compressor.errors import ConfigError, check_range


@register_pass
@dataclass(frozen=True)
class DropLayers(Pass):
    """Keep the bottom ``keep`` encoder layers of a BERT-family model, drop the rest."""

    name: ClassVar[str] = "drop-layers"
    consumes: ClassVar[str] = "torch"
    produces: ClassVar[str] = "torch"

    keep: int = option(4, "encoder layers to keep, counted from the bottom")

    def __post_init__(self):
        check_range("keep", self.keep, 1, 1000)

    def run(self, artifact, ctx):
        import torch

        model = copy.deepcopy(artifact.model)  # the input may be shared (e.g. with the teacher)
        base = getattr(model, model.base_model_prefix)
        layers = base.encoder.layer
        if self.keep > len(layers):
            raise ConfigError(f"drop-layers keep={self.keep} is more than the model's "
                              f"{len(layers)} layers: allowed 1..{len(layers)}")
        base.encoder.layer = torch.nn.ModuleList(list(layers)[:self.keep])
        model.config.num_hidden_layers = self.keep
        info = {**artifact.info, "layers": self.keep}
        return PassResult(type(artifact)(model, artifact.tokenizer, info),
                          modified=self.keep < len(layers),
                          metrics={"layers_before": len(layers), "layers_after": self.keep})


def main(argv=None) -> compressor.Report:
    """Run the pipeline with the custom pass; returns the run's report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--train", help="train file (TSV/CSV/JSONL); default: rotten-tomatoes")
    ap.add_argument("--eval", help="eval file")
    ap.add_argument("--keep", type=int, default=4, help="encoder layers to keep")
    ap.add_argument("--output", default="out/custom-pass")
    ap.add_argument("--max-train", type=int, default=2000)
    ap.add_argument("--max-eval", type=int, default=500)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--seq-len", type=int, default=64)
    args = ap.parse_args(argv)

    pipeline = compressor.Pipeline(f"finetune{{epochs=1}},drop-layers{{keep={args.keep}}},"
                                   "magnitude{sparsity=0.5,epochs=1},export")
    report = compressor.compress(
        args.model, pipeline=pipeline, train_file=args.train, eval_file=args.eval,
        output=args.output, max_train=args.max_train, max_eval=args.max_eval, runs=args.runs,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")], seq_lens=(args.seq_len,))
    for step in report.steps:
        shown = {k: v for k, v in step["metrics"].items() if isinstance(v, (int, float, str))}
        print(f"{step['index']:02d} {step['name']:12s} {step['seconds']:6.1f}s  {shown}")
    print(report)
    return report


if __name__ == "__main__":
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    main()
