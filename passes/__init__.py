"""The passes of compressor: one file per pass, shared helpers in ``_underscore`` modules.

This file holds the plugin's lazy tables, read by :mod:`compressor.registry` by name: importing
it imports no torch. Adding a pass or a method means a new file here and a line below, no edit of
the core. Whether a pass is a ``compress run --method`` is a fact of the pass class
(``is_method``, ``starts_from``); :data:`METHODS` only lists the names so that ``--help`` needs no torch
(tests check that the two agree).
"""

# name -> "module:Class"
PASSES = {
    "finetune": "passes.finetune:Finetune",
    "magnitude": "passes.magnitude:Magnitude",
    "export": "passes.export_onnx:Export",
    "sparse-init": "passes.sparse_initializers:SparseInit",
    "strip": "passes.strip:Strip",
    "ort-fuse": "passes.ort_fusion:OrtFuse",
    "quantize": "passes.quantize:Quantize",
    "choose-deploy": "passes.choose_deploy:ChooseDeploy",
    "nm-prune": "passes.nm_prune:NMPrune",
    "sparsebert": "passes.sparsebert.sparsebert:SparseBert",
    "cap": "passes.cap.cap:Cap",
    "rpp": "passes.rpp.rpp:Rpp",
    "nip": "passes.nip:Nip",
    "distill": "passes.distill.distill:Distill",
    "fisher": "passes.fisher.prune:Fisher",
    "layer-drop": "passes.layer_drop:LayerDrop",
    "hidden-prune": "passes.hidden_prune:HiddenPrune",
    "vocab-prune": "passes.vocab.prune:VocabPrune",
    "trim-positions": "passes.trim_positions:TrimPositions",
    "embed-int8": "passes.embed_quant:EmbedInt8",
}

# The passes that `compress run --method NAME` runs (their classes set is_method = True).
METHODS = ("magnitude", "sparsebert", "cap", "rpp", "nip", "fisher")

# Model families: config.model_type -> "module:Class" (a passes.families.base.Family). A new family
# is one file in passes/families/ and one line here.
FAMILIES = {
    "bert": "passes.families.bert:BertFamily",
    "roberta": "passes.families.roberta:RobertaFamily",
    "xlm-roberta": "passes.families.roberta:XLMRobertaFamily",
    "camembert": "passes.families.roberta:CamembertFamily",
    "electra": "passes.families.electra:ElectraFamily",
    "distilbert": "passes.families.distilbert:DistilBertFamily",
    "deberta-v2": "passes.families.deberta:DebertaV2Family",
    "modernbert": "passes.families.modernbert:ModernBertFamily",
}

# Model folders this plugin writes that plain from_pretrained cannot load:
# config attribute -> "module:function(folder) -> TorchModel".
MODEL_LOADERS = {
    "compressor_layers": "passes.strip:load_stripped",  # first: a stripped embedder is rebuilt here too
    "compressor_hidden": "passes.strip:load_stripped",  # hidden-prune: built at the first width, then cut
    "compressor_embedding": "compressor.embedder:load_embedder",
}
