"""Training and evaluation of emodemo bundles.

    recipe     DEFAULT_RECIPE, typed sections (Recipe, SpeechRecipe, TextRecipe), merge
    rundir     Run (run folder, checkpoints, resume, log), DDP setup
    loops      seeding, class weights, padding, BestEpoch (the one best-epoch tracker),
               fit_epochs (the one head-fitting loop)
    metrics    WA / UA / macro-F1
    speech     SpeechDataset, speech_proba, train_speech
    text       train_text (TextFit steps), prior correction
    frozen     the first-stage bundle: heads on frozen backbones (HeadOptions)
    features   the one frozen-backbone feature extractor (extract_all, FrameCache)
    evaluate   branch_proba (probabilities over items), evaluate (a bundle on a data spec)
    cards      model cards and plots
    pipeline   run_recipe, iemocap_protocol
"""
from .cards import model_card, plot_confusion, plot_curves, recipe_card
from .evaluate import branch_proba, evaluate, paired_proba
from .frozen import (VAL_ACTORS, HeadOptions, backbone_frames, predict_head, text_embeddings,
                     train_frozen_default, train_head, train_linear)
from .loops import BestEpoch, EpochPlan, class_weights, fit_epochs, pad_frames, seed_everything, state_copy
from .metrics import metrics
from .pipeline import iemocap_protocol, run_recipe
from .recipe import DEFAULT_RECIPE, FusionRecipe, Recipe, SpeechRecipe, TextRecipe, merge
from .rundir import TRAIN_LOG, Run, dist_setup, dist_teardown
from .speech import SpeechDataset, pad_collate, set_trainable, speech_proba, torchaudio_resample, train_speech
from .text import TAU_GRID, fit_prior_tau, prior_corrected, set_text_trainable, soft_targets_for, train_text

__all__ = [
    "model_card", "plot_confusion", "plot_curves", "recipe_card",
    "branch_proba", "evaluate", "paired_proba",
    "VAL_ACTORS", "HeadOptions", "backbone_frames", "predict_head", "text_embeddings", "train_frozen_default",
    "train_head", "train_linear",
    "BestEpoch", "EpochPlan", "class_weights", "fit_epochs", "pad_frames", "seed_everything", "state_copy",
    "metrics", "iemocap_protocol", "run_recipe",
    "DEFAULT_RECIPE", "FusionRecipe", "Recipe", "SpeechRecipe", "TextRecipe", "merge",
    "TRAIN_LOG", "Run", "dist_setup", "dist_teardown",
    "SpeechDataset", "pad_collate", "set_trainable", "speech_proba", "torchaudio_resample", "train_speech",
    "TAU_GRID", "fit_prior_tau", "prior_corrected", "set_text_trainable", "soft_targets_for", "train_text",
]
