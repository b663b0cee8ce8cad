"""The rendered API reference (docs/api.md) is exactly what scripts/gen-api-docs makes from protos/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def render(tmp_path: Path) -> str:
    out = tmp_path / "api.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-api-docs"), str(out)], check=True,
                   timeout=60)
    return out.read_text(encoding="utf-8")


def test_committed_api_reference_matches_protos(tmp_path):
    fresh = render(tmp_path)
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert fresh == committed, "docs/api.md is stale: run scripts/gen-api-docs"


def test_api_reference_documents_every_public_method_with_its_comment(tmp_path):
    text = render(tmp_path)
    assert "| `PullImage` | [PullImageRequest](#message-pullimagerequest) | stream " in text
    assert "| `ImportImage` | stream [ImportImageRequest](#message-importimagerequest) |" in text
    assert "Looks an image up by system and reference, or by id." in text
    assert "| `IMAGE_STATE_READY` | 5 | The image is on the system's image directory" in text
    assert '<a id="message-image"></a>' in text
