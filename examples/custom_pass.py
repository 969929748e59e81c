"""Write your own pass in your own file and run it in a pipeline, without touching the package.

    python examples/custom_pass.py

The pass below zeroes the classifier bias (a stand-in for any model surgery you need); it is a
frozen dataclass whose fields are its options, like every built-in pass.
"""

from dataclasses import dataclass
from typing import ClassVar

from compressor import Pass, PassResult, Pipeline, RunContext, option, register_pass
from compressor.data import load_task
from compressor.errors import check_range
from compressor.models import load_model


@register_pass
@dataclass(frozen=True)
class ScaleClassifier(Pass):
    """Multiply the classifier weights by a factor."""

    name: ClassVar[str] = "scale-classifier"
    factor: float = option(1.0, "multiplier for classifier.weight")

    def __post_init__(self):
        check_range("factor", self.factor, 0.0, 100.0)

    def run(self, artifact, ctx):
        import torch
        with torch.no_grad():
            artifact.model.classifier.weight.mul_(self.factor)
        return PassResult(artifact, modified=self.factor != 1.0, metrics={"factor": self.factor})


if __name__ == "__main__":
    task = load_task("rotten-tomatoes").subsample(200, 100)
    model = load_model("minilm", num_labels=task.num_labels, label_names=task.label_names)
    ctx = RunContext(workdir="out/custom-pass", data=task)
    result = Pipeline("scale-classifier{factor=0.5},export").run(model, ctx)
    for step in result.records:
        print(step.name, step.metrics.get("factor", ""), step.folder)
