"""What can be run: model specs to models and tokenizers (``models``, the published shapes in ``shapes``),
dataset specs to splits (``data``, files read by ``datafiles``, offline sources fetched by ``sources`` and
converted by ``converters``), tasks with their fields, prompts and metrics (``taskspecs``, torch-free;
``tasks``), fine-tuning methods (``methodspecs``, torch-free records with their traits; ``methods``,
applied through peft; ``loftq``), scoring written once per model family (``scoring``) and the batches a
model is fed (``batches``). The torch-free modules here are what the report may read."""
