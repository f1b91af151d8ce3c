"""`nexusd demo`: chat, an image, speech and its transcription through the gateway with the
official `openai` client; the image and the audio are written to files and their paths printed."""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="call chat, images, speech and transcription through the gateway")
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8800/v1"))
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    p.add_argument("--out", type=Path, default=Path("."), help="folder for nexus-demo.png / .mp3")
    p.add_argument("--prompt", default="Say hello to a new GPU box in one short sentence.")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    try:
        from openai import OpenAI, OpenAIError
    except ImportError:
        print("nexusd demo needs the openai package: pip install openai", file=sys.stderr)
        return 1
    if not args.api_key:
        print("nexusd demo: set OPENAI_API_KEY (nexusd dev prints one)", file=sys.stderr)
        return 2
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    try:
        chat = client.chat.completions.create(
            model=_default_model(client, "chat.completions"),
            messages=[{"role": "user", "content": args.prompt}], max_tokens=48,
        )
        print(f"chat ({chat.model}): {chat.choices[0].message.content!r}")
    except OpenAIError as exc:
        failures += 1
        print(f"chat failed: {exc}", file=sys.stderr)
    try:
        image = client.images.generate(prompt="a lighthouse on a rocky coast", size="256x256",
                                       response_format="b64_json")
        path = args.out / "nexus-demo.png"
        path.write_bytes(base64.b64decode((image.data or [])[0].b64_json or ""))
        print(f"image: {path.resolve()}")
    except OpenAIError as exc:
        failures += 1
        print(f"image failed: {exc}", file=sys.stderr)
    try:
        speech = client.audio.speech.create(model="tts-1", voice="alloy",
                                            input="Hello from your Nexus stack.", response_format="mp3")
        path = args.out / "nexus-demo.mp3"
        path.write_bytes(speech.content)
        print(f"speech: {path.resolve()}")
    except OpenAIError as exc:
        failures += 1
        print(f"speech failed: {exc}", file=sys.stderr)
        return 1
    try:  # and back: the speech just synthesised, transcribed
        with open(path, "rb") as audio:
            heard = client.audio.transcriptions.create(model="whisper-1", file=audio)
        print(f"transcription: {heard.text!r}")
    except OpenAIError as exc:
        failures += 1
        print(f"transcription failed: {exc}", file=sys.stderr)
    return 1 if failures else 0


def _default_model(client, operation: str) -> str:
    """A model of the LLM service (`owned_by` names the service in the gateway's list)."""
    models = client.models.list().data
    llm = [m.id for m in models if m.owned_by == "ollama"]
    return llm[0] if llm else (models[0].id if models else "default")
