"""Kyutai Pocket TTS (extra `tts`: pocket-tts): a 100M-parameter streaming model on the CPU.

Weights never download at run time unless NEXUS_TTS_POCKET_ALLOW_DOWNLOAD=true:
- NEXUS_TTS_POCKET_CONFIG: a pocket-tts YAML config whose weight and tokenizer paths are local
  files (relative paths are taken from the config's folder), or
- the packaged config for NEXUS_TTS_POCKET_LANGUAGE, with its `hf://` files already in the local
  Hugging Face cache (HF_HOME / HF_HUB_CACHE; fill it once with `pocket-tts generate` or
  `huggingface-cli download`).
The config is rewritten with local paths into a temporary file and given to pocket-tts's own
loader (`TTSModel.load_model(config=...)`), so no hf:// path reaches it.

Voices: the files in NEXUS_TTS_POCKET_VOICES (`name.wav` prompts or `name.safetensors` states
from `pocket-tts export-voice`), and pocket's built-in names (alba, marius, ...) whose states
are in the local cache. Voice states are computed once per voice, then reused.
Generation streams frame by frame (80 ms) from pocket's own threads; `stop` ends it at the
next frame, and NEXUS_TTS_POCKET_MAX_SECONDS caps a sentence whose end never comes.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nexusd.runtime.settings import ConfigError
from nexusd.services.tts.backends import Backend

log = logging.getLogger("nexusd.tts.pocket")


class PocketBackend(Backend):
    name = "pocket"
    speed_range = (1.0, 1.0)  # pocket has no rate control: speed is a tempo change
    default_voice_map = {
        "alloy": "alba", "ash": "marius", "ballad": "javert", "coral": "cosette", "echo": "jean",
        "fable": "fantine", "onyx": "charles", "nova": "eponine", "sage": "azelma",
        "shimmer": "anna", "verse": "paul", "marin": "mary", "cedar": "george",
    }

    def load(self) -> None:
        try:
            import yaml
            from pocket_tts import TTSModel
            from pocket_tts.utils.config import CONFIGS_DIR
        except ImportError:
            raise ConfigError("NEXUS_TTS_BACKEND=pocket needs the tts extra: pip install 'nexusd[tts]'") from None
        s = self.settings
        source = Path(s.pocket_config) if s.pocket_config else CONFIGS_DIR / f"{s.pocket_language}.yaml"
        if not source.is_file():
            raise ConfigError(f"NEXUS_TTS_POCKET_CONFIG: {source} does not exist")
        config = yaml.safe_load(source.read_text())
        no_cloning = self._localize_config(config, source.parent)
        with tempfile.TemporaryDirectory(prefix="nexus-pocket-") as tmp:
            resolved = Path(tmp) / "config.yaml"
            resolved.write_text(yaml.safe_dump(config))
            self.model = TTSModel.load_model(config=resolved)
        if no_cloning:
            self.model.has_voice_cloning = False
        self.sample_rate = self.model.sample_rate
        self._states: dict[str, Any] = {}
        self._sources = self._find_voices()
        if not self._sources:
            raise ConfigError("NEXUS_TTS_POCKET_VOICES: pocket has no voice: give a folder of .wav or "
                              ".safetensors prompts, or put built-in voices in the local cache")

    # --- no downloads: every hf:// path must come from the local cache ----------------------
    def _local(self, value: str | None, base: Path, what: str) -> str | None:
        if value is None:
            return None
        if value.startswith("hf://"):
            return str(self._from_hub(value, what))
        if value.startswith(("http://", "https://")):
            if not self.settings.pocket_allow_download:
                raise ConfigError(f"NEXUS_TTS_POCKET_CONFIG: {what} is a URL ({value}) and downloads are off "
                                  "(NEXUS_TTS_POCKET_ALLOW_DOWNLOAD)")
            return value
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.is_file():
            raise ConfigError(f"NEXUS_TTS_POCKET_CONFIG: {what} {path} does not exist")
        return str(path)

    def _from_hub(self, url: str, what: str) -> Path:
        from huggingface_hub import hf_hub_download

        repo_path = url.removeprefix("hf://")
        revision = None
        if "@" in repo_path:
            repo_path, revision = repo_path.rsplit("@", 1)
        parts = repo_path.split("/")
        try:
            return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision,
                                        local_files_only=not self.settings.pocket_allow_download))
        except Exception as exc:  # LocalEntryNotFoundError, or any hub error when allowed
            raise ConfigError(f"NEXUS_TTS_POCKET_CONFIG: {what} {url} is not in the local Hugging Face "
                              f"cache ({type(exc).__name__}); provide local weights through a config, or "
                              "set NEXUS_TTS_POCKET_ALLOW_DOWNLOAD=true") from None

    def _localize_config(self, config: dict, base: Path) -> bool:
        """Rewrite `config` in place with local paths; True when only the bundle without voice
        cloning is available (then .wav prompts cannot be used, states can)."""
        flow, mimi = config.get("flow_lm", {}), config.get("mimi", {})
        table = flow.get("lookup_table", {})
        table["tokenizer_path"] = self._local(table.get("tokenizer_path"), base, "tokenizer")
        flow["weights_path"] = self._local(flow.get("weights_path"), base, "flow_lm weights")
        mimi["weights_path"] = self._local(mimi.get("weights_path"), base, "mimi weights")
        fallback = config.pop("weights_path_without_voice_cloning", None)
        try:
            config["weights_path"] = self._local(config.get("weights_path"), base, "weights")
        except ConfigError:
            if fallback is None:
                raise
            config["weights_path"] = self._local(fallback, base, "weights (without voice cloning)")
            return True
        if config.get("weights_path") is None and flow.get("weights_path") is None:
            raise ConfigError("NEXUS_TTS_POCKET_CONFIG: the config names no weights")
        return False

    def _find_voices(self) -> dict[str, Path | str]:
        sources: dict[str, Path | str] = {}
        folder = self.settings.pocket_voices
        if folder:
            for path in sorted(Path(folder).glob("*")):
                if path.suffix in (".wav", ".safetensors") and path.is_file():
                    if path.suffix == ".wav" and not self.model.has_voice_cloning:
                        log.warning("skipping %s: these weights have no voice cloning", path.name)
                        continue
                    sources[path.stem] = path
        if not getattr(self.model, "has_custom_weights", False) and not self.settings.pocket_config:
            from pocket_tts.utils.utils import _ORIGINS_OF_PREDEFINED_VOICES, get_predefined_voice

            for name in _ORIGINS_OF_PREDEFINED_VOICES:
                if name in sources:
                    continue
                try:
                    sources[name] = self._from_hub(get_predefined_voice(self.settings.pocket_language, name), name)
                except ConfigError:
                    continue  # not cached: not offered
        return sources

    # --- the backend interface ----------------------------------------------------------
    def voices(self) -> list[str]:
        return list(self._sources)

    def describe(self) -> str:
        return f"Pocket TTS, {len(self._sources)} voices, {self.sample_rate} Hz"

    def _state(self, voice: str) -> Any:
        state = self._states.get(voice)
        if state is None:
            state = self.model.get_state_for_audio_prompt(Path(self._sources[voice]))
            self._states[voice] = state
        return state

    def synthesize(self, text: str, voice: str, speed: float,
                   stop: threading.Event) -> Iterator[np.ndarray]:
        state = self._state(voice)
        # pocket's own stop event, set when the request stops or the cap is reached; it ends
        # generation at the next frame.
        halt = threading.Event()
        limit = int(self.settings.pocket_max_seconds * self.sample_rate)
        produced = 0
        stream = self.model.generate_audio_stream(state, text, copy_state=True, stop=halt)
        try:
            for chunk in stream:
                if stop.is_set():
                    break
                # pocket decodes whatever frames are queued in one call, so cut to the sample.
                samples = chunk.numpy().astype(np.float32, copy=False)[:limit - produced]
                produced += samples.size
                yield samples
                if produced >= limit:
                    log.warning("sentence reached NEXUS_TTS_POCKET_MAX_SECONDS=%g; cut",
                                self.settings.pocket_max_seconds)
                    break
        finally:
            halt.set()
            stream.close()
