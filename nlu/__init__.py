"""Custom Rasa NLU components for Chinese: a jieba tokenizer that knows when its dictionary changed, and
a time-expression extractor backed by bot.timeparse (JioNLP)."""
