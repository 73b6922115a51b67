"""One training process of a multi-process fine-tune: ``accelerate launch ... -m edgeft.finetune.worker SPEC``.

:func:`edgeft.finetune.launch.launch` writes ``SPEC`` (records and settings) and starts the processes;
each runs :func:`edgeft.finetune.finetune` on it. A module of its own so that ``launch`` (imported by
``edgeft.finetune``) never imports ``edgeft.finetune`` back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def main(spec_path: str) -> None:
    from edgeft.config.schema import FinetuneConfig
    from edgeft.data.readers import read_records
    from edgeft.finetune import finetune

    logging.basicConfig(level=logging.INFO, format="[rank %s] %%(message)s" % os.environ.get("RANK", "0"))
    spec = json.loads(Path(spec_path).read_text())
    finetune(Path(spec["model_path"]), read_records(spec["train"]), read_records(spec["eval"]), Path(spec["out_dir"]),
             FinetuneConfig.model_validate(spec["cfg"]), spec["system_prompt"], work_dir=Path(spec["work_dir"]))


if __name__ == "__main__":
    main(sys.argv[1])
