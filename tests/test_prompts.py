"""The shipped prompt templates against the texts they say they are: the latent-thought prompt is BoLT's, word for
word; the Wikipedia rephrase is the third-party re-implementation's; every shipped template names its source."""

import yaml

from megadoc.preprocess.generate.prompts import PROMPTS_DIR, load_prompt

# Ruan et al. 2025 (BoLT), github.com/ryoungj/BoLT, configs/gen/gpt_latent_thoughts.yaml at commit
# e06e19634777d2a8d47c28fefcd3fb4d6fbe7708, its two prompt keys copied as published (YAML escapes and all).
BOLT_GPT_LATENT_THOUGHTS = r"""
  system_prompt: "You are an advanced AI system, highly knowledgeable and capable of deeply understanding and reasoning through any web document."
  prompt_template: "You are provided with a pair of web document prefix and suffix. Your task is to insert latent thoughts between them underlying the creation of the suffix conditioned on the prefix. The latent thoughts should include: the missing background knowledge and the reasoning traces underlying each claim (especially, step-by-step derivations or logical reasoning).\n\n### Prefix:\n{prefix}\n\n### Suffix:\n{suffix}\n\n### Your turn:\nNow provide the latent thoughts. Use concise, simple, and declarative language. Do not give any supporting remarks or references to the terms 'prefix' and 'suffix', as this output will go directly into a computer program. Do not apply any markdown formatting or text embellishments. Optimize the content to ensure every word is informative, avoid vague language like 'xxx is essential'. Emphasize on the suffix without repeating the content in the prefix. Focus on implicit reasoning and background knowledge that is not explicitly stated in the suffix, and use concrete logical reasoning or mathematical derivations when applicable."
"""

# The re-implementation PAPER.md tags [REIMPL] ("Baselines from arXiv:2603.18534"), its SYSTEM and REPHRASE.
REIMPL_SYSTEM = "Provide a direct response to the instructions without adding additional notes."
REIMPL_REPHRASE = """For the following document, regardless of its original content or formatting, write a full article of the same content in high quality English language as in texts on Wikipedia:

Document:
{text}

Rephrased article:"""


def test_latent_thought_prompt_is_bolts_verbatim():
    published = yaml.safe_load(BOLT_GPT_LATENT_THOUGHTS)
    shipped = load_prompt("latent_thoughts", "rationale")
    assert shipped.user == published["prompt_template"]
    assert shipped.system == published["system_prompt"]
    text = (PROMPTS_DIR / "latent_thoughts.yaml").read_text()
    assert "ryoungj/BoLT" in text and "configs/gen/gpt_latent_thoughts.yaml" in text


def test_wikipedia_prompt_is_the_reimplementations_and_says_so():
    shipped = load_prompt("wikipedia", "rephrase")
    assert (shipped.system, shipped.user) == (REIMPL_SYSTEM, REIMPL_REPHRASE)
    text = (PROMPTS_DIR / "wikipedia.yaml").read_text()
    assert "NOT the authors'" in text and "[REIMPL]" in text


def test_every_shipped_prompt_names_its_source():
    shipped = sorted(PROMPTS_DIR.glob("*.yaml"))
    assert len(shipped) == 4
    for path in shipped:
        assert any(line.startswith("# Source: ") for line in path.read_text().splitlines()), path.name
