"""Operations: what watches the runs themselves."""
